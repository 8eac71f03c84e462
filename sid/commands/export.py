"""Export a run's generator (G_ema) as safetensors + JSON, readable without this package and without running code.

    sid export RUN --format safetensors [--out FILE.safetensors]

writes FILE.safetensors (the state dict, float32, EDM's parameter names) and FILE.json beside it: `init_kwargs`
(EDMPrecond's constructor arguments), `sigma_init`, `preset`, `fid_detector`, `fid_ref`, `best_fid` and its
`fid_images`/`kimg`. The same JSON is stored in the safetensors header metadata under "sid". Non-finite numbers
(e.g. sigma_max = inf) are written as the strings "inf"/"-inf"/"nan" so the JSON is strict.
`sid.generators.load_exported(FILE)` rebuilds the network; its images are bit-identical to the run's.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from sid.flags import Parser
from sid.generators import FORMAT, load_generator
from sid.networks.precond import EDMPrecond

FORMATS = ("safetensors",)


def _strict(value: Any) -> Any:
    """Plain JSON values: tuples as lists, non-finite floats as strings."""
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def describe(net: EDMPrecond, info: dict[str, Any]) -> dict[str, Any]:
    """The JSON of an export: constructor arguments, sampling settings and the score that picked these weights."""
    config = info.get("config") or {}
    return _strict(dict(
        format=FORMAT, init_kwargs=dict(net.init_kwargs),
        sigma_init=info.get("sigma_init") or config.get("sigma_init"),
        preset=config.get("preset"), teacher=config.get("teacher"),
        fid_detector=info.get("fid_detector") or config.get("fid_detector"), fid_ref=config.get("fid_ref"),
        best_fid=info.get("fid"), fid_images=info.get("fid_images"), kimg=info.get("kimg"),
        source=info.get("source"),
    ))


def export_safetensors(source: str | Path, out: str | Path) -> tuple[Path, Path]:
    """Write `out` (.safetensors) and its .json for the generator `source` resolves to (sid.generators)."""
    from safetensors.torch import save_file

    from sid.results import write_file_atomic

    net, info = load_generator(source)
    meta = describe(net, info)
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out: expected a file name ending in .safetensors, got {str(out)!r}")
    tensors = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    text = json.dumps(meta, indent=2, allow_nan=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    # safetensors writes a path, not a stream: save beside, then rename (atomic like every other result file)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={"sid": text})
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    json_path = write_file_atomic(out.with_suffix(".json"), lambda f: f.write(text.encode() + b"\n"))
    return out, json_path


def build_parser() -> Parser:
    parser = Parser(prog="sid export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run folder, snapshot .pt, or SiD/EDM network-snapshot .pkl (path or URL)")
    parser.add_argument("--format", default="safetensors", choices=FORMATS, help="output format")
    parser.add_argument("--out", default=None, help="output .safetensors (default: RUN/export/generator.safetensors;"
                                                    " the .json goes beside it)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    run = Path(args.run)
    out = Path(args.out) if args.out else (run if run.is_dir() else run.parent) / "export" / "generator.safetensors"
    if not str(out).endswith(".safetensors"):
        parser.error(f"--out: expected a file name ending in .safetensors, got {str(out)!r}")
    try:
        weights, meta = export_safetensors(args.run, out)
    except ValueError as exc:
        parser.error(str(exc))
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {weights} and {meta}")
