"""Model checkpoints: weights as safetensors with the :class:`ModelSpec` that rebuilds the graph in the header."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from edgekd.errors import EdgeKDError, first_line
from edgekd.models.base import ModelSpec


def save_model(path: str | Path, model: nn.Module, spec: ModelSpec, meta: dict | None = None) -> Path:
    """Write weights as safetensors (atomically), with the spec and ``meta`` in the header."""
    from safetensors.torch import save_file

    from edgekd.fsutil import atomic_path

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"edgekd.spec": json.dumps(spec.to_dict()), "edgekd.meta": json.dumps(meta or {})}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return Path(path)


def load_model(path: str | Path, spec: ModelSpec | None = None, *,
               trust_code: bool = False) -> tuple[nn.Module, ModelSpec, dict]:
    """Load a safetensors checkpoint written by :func:`save_model` (or bare weights plus ``spec``).

    A spec naming a ``file.py:factory`` architecture is refused unless ``trust_code``: a checkpoint must
    not be able to make edgekd import Python code the user did not name.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise EdgeKDError(f"checkpoint {path} does not exist", "check the path")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise EdgeKDError(
            f"{path} is not a readable safetensors checkpoint ({first_line(err, 120)})",
            "pass a .safetensors file written by edgekd or safetensors.torch.save_file",
        ) from None
    if spec is None:
        if "edgekd.spec" not in header:
            raise EdgeKDError(f"{path} carries no edgekd model spec", "pass --teacher-arch (and width) for bare weights")
        spec = ModelSpec.from_dict(_header_json(path, header, "edgekd.spec", dict))
    if ".py:" in spec.arch and not trust_code:
        raise EdgeKDError(f"{path} was built by the model file {spec.arch}, which edgekd does not import on its own",
                          f"pass the factory explicitly (e.g. --model {spec.arch} --weights {path})")
    meta = _header_json(path, header, "edgekd.meta", dict, "{}")
    from edgekd.models.adapt import check_spec_fits

    check_spec_fits(spec, state, path)  # an edited header must not make edgekd allocate or call what it asks
    model = spec.build()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        # Missing, unexpected or differently shaped tensors: the weights are for another model.
        detail = next((ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()), "tensor mismatch")
        raise EdgeKDError(
            f"{path} does not match architecture {spec.arch} (width {spec.width}, depth {spec.depth}): {detail[:140]}",
            "pass the architecture and width the weights were trained with",
        ) from None
    model.eval()
    return model, spec, meta


def _header_json(path: Path, header: dict, key: str, kind: type, default: str | None = None):
    try:
        value = json.loads(header.get(key, default))
    except RecursionError:
        raise EdgeKDError(f"{path}: its {key} metadata is nested too deeply to read",
                          "the checkpoint was edited or not written by edgekd; save it again with edgekd") from None
    except (TypeError, ValueError):
        value = None
    if not isinstance(value, kind):
        raise EdgeKDError(f"{path}: its {key} metadata is not a JSON object",
                          "the checkpoint was edited or not written by edgekd; save it again with edgekd")
    return value
