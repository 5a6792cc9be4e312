"""White-box formats: a weights-only torch state dict, and a ``torch.export`` program (.pt2)."""

from __future__ import annotations

import contextlib
import logging
import zipfile
from collections.abc import Callable, Iterator, Mapping

import torch

from tasks.pairs.base import PairError, PairSide, buffer, not_a, short, side_key

MODEL_HINT = ('required for format torch_state_dict: a registered architecture '
              '{name: mlp, ...} or {factory: "module:function"}')


def _names(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _state_dict(obj: object, path: str, key: str) -> Mapping[str, torch.Tensor]:
    """A plain state dict or {"state_dict": ...}, every value a tensor."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise PairError(key, f"{path}: not a weights-only torch state dict (holds a "
                             f"{type(obj).__name__}, not a dict of tensors)")
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise PairError(key, f"{path}: not a weights-only torch state dict (entry {name!r} "
                                 f"is a {type(value).__name__}, not a tensor)")
    return obj


def _fit(module: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str,
         key: str) -> None:
    """Strict load_state_dict, with the mismatch said in one line instead of torch's list."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    problems = []
    if missing:
        problems.append(f"missing keys {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_names(unexpected)}")
    if problems:
        raise PairError(key, f"{path}: does not fit the model: " + "; ".join(problems))
    for name, tensor in own.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise PairError(key, f"{path}: does not fit the model: {name} has shape "
                                 f"{tuple(state[name].shape)} in the file and "
                                 f"{tuple(tensor.shape)} in the model")
    try:
        module.load_state_dict(state, strict=True)
    except Exception as err:  # dtype casts and custom load hooks can still refuse
        raise PairError(key, f"{path}: does not fit the model ({short(err)})") from err


def load_state_dict_side(name: str, path: str, data: bytes,
                         model_builder: Callable[[], torch.nn.Module] | None,
                         device: str) -> PairSide:
    key = side_key(name)
    if model_builder is None:
        raise PairError("pair.model", MODEL_HINT)
    # weights_only: a state dict from outside must not run code while it is unpickled.
    with not_a(key, path, "a weights-only torch state dict"):
        obj = torch.load(buffer(data), weights_only=True, map_location="cpu")
    state = _state_dict(obj, path, key)
    try:
        module = model_builder()
    except PairError:
        raise
    except Exception as err:
        raise PairError("pair.model", f"cannot build the model ({short(err)})") from err
    if not isinstance(module, torch.nn.Module):
        raise PairError("pair.model", f"the model factory returned a {type(module).__name__}, "
                                      "not a torch.nn.Module")
    _fit(module, state, path, key)
    module = module.to(device).eval()
    return PairSide(name, True, module, source=path, device=device)


@contextlib.contextmanager
def _quiet_export_logs() -> Iterator[None]:
    """torch.export.load logs a full traceback before raising on a bad archive; the CLI must
    print one line, so the raise (turned into a PairError) is all that is kept."""
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _archive_problem(data: bytes) -> str:
    """Why ``data`` is not a .pt2 archive ("" when it looks like one)."""
    try:
        with zipfile.ZipFile(buffer(data)) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        return "not a zip archive"
    if any(n.endswith("archive_format") for n in names):
        return ""
    if any(n.endswith("data.pkl") for n in names):
        return "a torch.save file; use format torch_state_dict for state dicts"
    return "a zip archive without the .pt2 archive_format record"


def _static_batch(ep, path: str, key: str) -> None:
    user = [s.arg.name for s in ep.graph_signature.input_specs
            if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    if len(user) != 1:
        raise PairError(key, f"{path}: the program takes {len(user)} inputs "
                             f"({', '.join(user)}); the audit feeds one (n, *input_shape) tensor")
    node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == user[0])
    val = node.meta.get("val")
    shape = getattr(val, "shape", None)
    if shape is None or len(shape) == 0:
        raise PairError(key, f"{path}: the program's input {user[0]} is not a tensor")
    if isinstance(shape[0], int):
        raise PairError(key, f"{path}: exported with a static batch size of {shape[0]}; export "
                             "it with a dynamic batch: torch.export.export(model, (x,), "
                             f'dynamic_shapes={{"{user[0]}": {{0: torch.export.Dim("batch")}}}})')


def _move_program(ep, device: str):
    """``ep`` on ``device``: a program exported on the CPU burns ``device=cpu`` into the ops
    that create tensors (torch.zeros, arange, ...) and keeps lifted constants as plain
    attributes, which ``Module.to`` moves neither of; ``move_to_device_pass`` rewrites both."""
    if torch.device(device).type == "cpu":
        return ep  # the CPU path as it always was
    try:
        from torch.export.passes import move_to_device_pass
    except ImportError:  # older torch: parameters and buffers only (Module.to, below)
        return ep
    return move_to_device_pass(ep, device)


def load_export_side(name: str, path: str, data: bytes, device: str) -> PairSide:
    key = side_key(name)
    problem = _archive_problem(data)
    if problem:
        raise PairError(key, f"{path}: not a torch_export file ({problem})")
    with not_a(key, path, "a torch_export file"), _quiet_export_logs():
        ep = torch.export.load(buffer(data))
    with not_a(key, path, "a usable torch_export program"):
        _static_batch(ep, path, key)
        # The unlifted module holds the parameters as real tensors: autograd reaches them.
        # Its train/eval mode is fixed at export (eval() raises NotImplementedError).
        module = _move_program(ep, device).module().to(device)
    return PairSide(name, True, module, source=path, device=device)
