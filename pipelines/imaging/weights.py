"""What a diffusers directory will take once loaded, read from its files before loading them.

A 58 GB model on a 32 GiB service must be refused before ``from_pretrained`` fills host memory and
the process is killed; a model that cannot fit the GPU share must be refused before minutes of
loading. Both need the sizes first: safetensors headers give every tensor's dtype and shape (a few
kilobytes read per file), and a GGUF file's size is what its quantized weights take.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from core.errors import PermanentError
from pipelines.imaging.memory import MEMORY_SHORT

# Bytes per element of the safetensors dtypes a diffusers checkpoint holds.
_ELEMENT = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}  # fmt: skip
_FLOATS = {"F64", "F32", "F16", "BF16"}


def safetensors_bytes(path: Path, float_bytes: int) -> int:
    """Bytes of a safetensors file's tensors once loaded with floating tensors cast to
    ``float_bytes`` per element (other dtypes as stored); only the header is read."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = entry["dtype"]
        size = float_bytes if dtype in _FLOATS else _ELEMENT.get(dtype, 4)
        total += math.prod(entry["shape"]) * size
    return total


def component_sizes_on_disk(model_dir: str, float_bytes: int, *, replaced: dict[str, Path]) -> dict[str, int]:
    """Bytes each torch component of the diffusers directory will take in memory.

    ``replaced`` maps components loaded from elsewhere (a GGUF transformer) to that file, whose size
    counts instead. Components without safetensors files (tokenizers, schedulers) are left out.
    """
    root = Path(model_dir)
    try:
        index = json.loads((root / "model_index.json").read_text())
    except (OSError, ValueError) as e:
        raise PermanentError(f"cannot read {str(root / 'model_index.json')!r}: {e}") from e
    sizes: dict[str, int] = {}
    for name in index:
        if name.startswith("_"):
            continue
        if name in replaced:
            sizes[name] = replaced[name].stat().st_size
            continue
        files = sorted((root / name).glob("*.safetensors"))
        if files:
            sizes[name] = sum(safetensors_bytes(f, float_bytes) for f in files)
    return sizes


def host_memory_available() -> int | None:
    """Bytes this process can still take from host memory: the smaller of the kernel's
    ``MemAvailable`` and what the cgroup limit (Cloud Run's memory setting) leaves; ``None`` when
    neither can be read."""
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def check_host_memory(what: str, sizes: dict[str, int], available: int | None) -> None:
    """Refuse to load weights that host memory cannot hold (``from_pretrained`` reads every
    component into host memory before any moves to the GPU).

    Raises:
        PermanentError: ``gpu_memory_short``, with the sizes.
    """
    total = sum(sizes.values())
    if available is None or total <= available:
        return
    parts = ", ".join(f"{name} {n / 1e9:.1f} GB" for name, n in sorted(sizes.items(), key=lambda kv: -kv[1]))
    raise PermanentError(
        f"{what} does not fit host memory: loading it takes {total / 1e9:.1f} GB ({parts}) and "
        f"{available / 1e9:.1f} GB is available; use a quantized transformer (transformer_gguf) "
        "or a machine with more memory",
        code=MEMORY_SHORT,
    )
