"""Where a model's weights go: one device, or spread over several (`--device-map`,
`--max-memory`).

The flags are checked when a command's config is built, so a bad map is refused in one line
before anything is loaded or written; what needs the model itself (its module names, the
machine's GPUs) is checked by `shoggoth.sae.models` just before the weights load.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

from shoggoth.core.errors import BadInput, clip, first_line, shown
from shoggoth.core.text import read_text

DeviceMap = dict[str, str | int]
"""Module name (as the Hugging Face model names it) → device ('cpu', 'cuda:1', or a GPU
index)."""
MaxMemory = dict[str | int, str | int]
"""GPU index or 'cpu' → the most memory accelerate may fill there ('20GiB', or bytes)."""

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
"""The device maps accelerate computes itself (`auto` is `balanced`)."""
MAP_LIMIT = 1_000_000
"""The most bytes a device-map file may hold."""
SIZE = re.compile(r"[0-9]{1,15}(\.[0-9]{1,9})?(GiB|MiB|KiB|GB|MB|KB)")
"""A memory size as accelerate reads it (a bare integer is bytes)."""
OFFLOAD = frozenset({"meta", "disk"})
"""Device-map targets accelerate offloads to, which TransformerLens's bridge cannot run."""
DEVICE = re.compile(r"cpu|cuda(:[0-9]{1,6})?")
"""The device names a map may give (as --device takes them)."""


@dataclass(frozen=True)
class Placement:
    """How a model's weights are laid over devices."""

    device_map: str | DeviceMap | None = None
    """None: the whole model on one device (--device). A strategy of `STRATEGIES`: accelerate
    spreads the modules over the GPUs (within `max_memory`). A dict: each module's device, as
    given."""
    max_memory: MaxMemory | None = None
    """Per device, the most memory accelerate may fill while placing modules (only with a device
    map); None: what each device has free."""
    file: str | None = None
    """The JSON file an explicit map was read from."""

    @property
    def flag(self) -> str:
        """The flag and value the map came from, as messages name it."""
        return f"--device-map {clip(str(self.file or self.device_map), 200)}"

    @property
    def spread(self) -> bool:
        """Whether the model is laid out by a device map rather than moved to one device."""
        return self.device_map is not None

    def devices(self) -> list[str]:
        """The devices an explicit map names, as torch spells them ('cuda:0' for GPU 0); empty
        for a strategy or one device."""
        if not isinstance(self.device_map, dict):
            return []
        return sorted(
            {f"cuda:{v}" if isinstance(v, int) else _full(v) for v in self.device_map.values()}
        )


def _full(device: str) -> str:
    return "cuda:0" if device == "cuda" else device


def accelerate_installed() -> bool:
    """Whether accelerate, which transformers spreads a model with, can be imported."""
    return importlib.util.find_spec("accelerate") is not None


def placement_of(device_map: str | None, max_memory: str | None) -> Placement:
    """The placement `--device-map` and `--max-memory` ask for; BadInput in one line naming
    the flag (and the file) when they cannot be used."""
    if device_map is None:
        if max_memory is not None:
            raise BadInput(
                f"--max-memory {shown(max_memory)}: only with --device-map (it caps "
                "what accelerate puts on each device while spreading the model)"
            )
        return Placement()
    if not device_map.strip():
        raise BadInput("--device-map: is empty (give auto or a JSON file)")
    if "\0" in device_map:
        raise BadInput(f"--device-map {shown(device_map)}: not a usable path (it holds a NUL byte)")
    if not accelerate_installed():
        raise BadInput(
            f"--device-map {clip(device_map, 200)}: needs the accelerate package, "
            "which is not installed (pip install accelerate)"
        )
    budget = parse_max_memory(max_memory) if max_memory is not None else None
    if device_map in STRATEGIES:
        return Placement(device_map, budget)
    return Placement(read_device_map(Path(device_map)), budget, device_map)


def read_device_map(path: Path) -> DeviceMap:
    """A device-map JSON file: an object of module name → device; BadInput naming the file and
    what is wrong with it."""
    name = f"--device-map {clip(str(path), 200)}"
    try:
        found = path.exists()
    except (OSError, ValueError) as e:  # a name too long
        problem = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
        raise BadInput(f"{name}: not a usable file name ({problem})") from None
    if not found:
        raise BadInput(
            f"{name}: no such file (give auto, {', '.join(STRATEGIES[1:])}, or a "
            "JSON file of module → device)"
        )
    text = read_text(path, "--device-map", MAP_LIMIT)
    if len(text.encode()) > MAP_LIMIT:
        raise BadInput(f"{name}: over {MAP_LIMIT:,} bytes; a device map names modules, not weights")
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInput(f"{name}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except (ValueError, RecursionError) as e:  # an integer too long, nesting too deep
        raise BadInput(f"{name}: not a usable JSON file ({clip(str(e), 120)})") from None
    if not isinstance(loaded, dict) or not loaded:
        raise BadInput(
            f"{name}: expected a JSON object of module name → device, e.g. "
            '{"transformer.h.0": "cuda:0", "transformer.h.1": 1}'
        )
    out: DeviceMap = {}
    for module, device in loaded.items():
        out[module] = _map_device(name, module, device)
    if any(d == "cpu" for d in out.values()) and any(d != "cpu" for d in out.values()):
        raise BadInput(
            f"{name}: mixes the CPU and GPUs; accelerate would offload the CPU part, "
            "which TransformerLens cannot run (map every module to a GPU, or every "
            "one to the CPU)"
        )
    return out


def _map_device(name: str, module: str, device: object) -> str | int:
    """One map entry's device, checked: a GPU index, cpu, cuda or cuda:N."""
    where = f"{name}: module {shown(module)}"
    if module and (module != module.strip() or "" in module.split(".")):
        raise BadInput(f"{where}: not a module name (dotted names, e.g. transformer.h.0)")
    if isinstance(device, bool) or not isinstance(device, int | str):
        raise BadInput(f"{where}: device {shown(device)} is neither a GPU index nor a device name")
    if isinstance(device, int):
        if device < 0:
            raise BadInput(f"{where}: GPU index {device} is negative")
        return device
    if device.strip().lower() in OFFLOAD:
        raise BadInput(
            f"{where}: device '{clip(device)}' offloads the weights, which "
            "TransformerLens cannot run; use cpu or a GPU"
        )
    # (torch's own parser is not used: the CLI and the pure statistics import no torch; every
    # device accepted here is one torch accepts)
    if not DEVICE.fullmatch(device):
        raise BadInput(
            f"{where}: device {shown(device)} is not one a model runs on here (use "
            "cpu, cuda, cuda:N or a GPU index)"
        )
    return device


def parse_max_memory(text: str) -> MaxMemory:
    """`0=20GiB,1=20GiB,cpu=64GiB` as the dict transformers takes: {0: '20GiB', 1: '20GiB',
    'cpu': '64GiB'} (a GPU as its index, `cuda:N` too; a bare number is bytes)."""
    flag = f"--max-memory {shown(text)}"
    out: MaxMemory = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise BadInput(f"{flag}: an empty entry (write DEVICE=SIZE,..., e.g. 0=20GiB,1=20GiB)")
        device, eq, size = (s.strip() for s in part.partition("="))
        if not eq or not device or not size:
            raise BadInput(f"{flag}: {shown(part)} is not DEVICE=SIZE (e.g. 0=20GiB)")
        key: str | int
        gpu = re.fullmatch(r"(cuda:)?([0-9]{1,6})", device)
        if gpu:
            key = int(gpu.group(2))
        elif device == "cpu":
            key = "cpu"
        else:
            raise BadInput(f"{flag}: device {shown(device)} is not a GPU index, cuda:N or cpu")
        if key in out:
            raise BadInput(f"{flag}: device {shown(device)} is given twice")
        value: str | int
        if re.fullmatch(r"[0-9]{1,20}", size):
            value = int(size)
        elif SIZE.fullmatch(size):
            value = size
        else:
            raise BadInput(
                f"{flag}: size {shown(size)} is not a number of bytes or a size "
                "such as 20GiB, 512MiB or 40GB"
            )
        out[key] = value
    return out
