"""shoggoth: SAE features of a language model, labelled mask-specific or shared across personas.

One namespace: `shoggoth.core` (errors, atomic files, configs), `shoggoth.battery` (personas,
items, units: no model, no database), `shoggoth.sae` (everything that runs a network; the
repository's `sae/`), `shoggoth.index` (the feature database; `index/`), `shoggoth.pipeline`
(the steps that need both), and on top `shoggoth.cli` and `shoggoth.explorer` (`explorer/`).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("shoggoth")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
