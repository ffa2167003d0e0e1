"""The search stage (`shoggoth search`): one library function per mode, and the subcommands."""
