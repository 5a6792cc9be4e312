"""Query format: an ONNX model run by onnxruntime on the CPU."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tasks.pairs.base import PairError, PairSide, not_a, short, side_key

_FLOATS = {"tensor(float)": np.float32, "tensor(double)": np.float64,
           "tensor(float16)": np.float16}
# How many test records decide whether the first output is probabilities or logits.
_SAMPLE = 64


def _is_probabilities(out: np.ndarray) -> bool:
    return bool(out.ndim == 2 and np.all(out >= 0)
                and np.allclose(out.sum(axis=1), 1.0, rtol=0, atol=1e-4))


class OnnxModule(torch.nn.Module):
    """(n, *input_shape) float tensor -> logits (n, C) from an onnxruntime session.

    Inputs are flattened when the ONNX input has rank 2. When the model's output is
    probabilities (decided once, at load) the logits are log(clip(p, 1e-12)). No parameters, no
    gradients: the session runs outside autograd.
    """

    def __init__(self, session: Any, input_name: str, rank: int | None, dtype: Any,
                 output: str) -> None:
        super().__init__()
        self.session, self.input_name, self.rank = session, input_name, rank
        self.dtype, self.output = dtype, output
        self.probabilities = False

    def raw(self, x: torch.Tensor) -> np.ndarray:
        rows = x.detach().cpu().numpy()
        if self.rank == 2:
            rows = rows.reshape(len(rows), -1)
        return np.asarray(self.session.run([self.output], {self.input_name: rows.astype(
            self.dtype)})[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.raw(x).astype(np.float64)
        if self.probabilities:
            out = np.log(np.clip(out, 1e-12, 1.0))
        return torch.from_numpy(out.astype(np.float32)).to(x.device)


def _static_batch_message(path: str, name: str, size: int) -> str:
    return (f"{path}: exported with a static batch size of {size}; export it with a dynamic "
            f'batch: torch.onnx.export(model, (x,), path, input_names=["{name}"], '
            f'dynamic_axes={{"{name}": {{0: "batch"}}}}) or name the first dimension '
            "(dim_param) of the ONNX input")


def load_onnx_side(name: str, path: str, data: bytes, dataset, device: str) -> PairSide:
    key = side_key(name)
    import onnxruntime as ort

    options = ort.SessionOptions()
    # One thread: pairs are loaded inside Ray workers that already fill every core.
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # warnings from the runtime would break the one-line rule
    with not_a(key, path, "an onnx file"):
        session = ort.InferenceSession(data, sess_options=options,
                                       providers=["CPUExecutionProvider"])
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise PairError(key, f"{path}: the model takes {len(inputs)} inputs "
                             f"({', '.join(i.name for i in inputs)}); the audit feeds one")
    spec = inputs[0]
    if spec.type not in _FLOATS:
        raise PairError(key, f"{path}: input {spec.name} has type {spec.type}; the audit feeds "
                             "float tensors")
    shape = spec.shape
    if shape and isinstance(shape[0], int) and shape[0] > 0:
        raise PairError(key, _static_batch_message(path, spec.name, shape[0]))
    # A classifier converted by skl2onnx puts its int64 labels first: take the first float
    # tensor output, which is the probabilities (or logits) the audit reads.
    floats = [o for o in outputs if o.type in _FLOATS]
    if not floats:
        raise PairError(key, f"{path}: no float tensor output (outputs: "
                             f"{', '.join(f'{o.name} {o.type}' for o in outputs)})")
    module = OnnxModule(session, spec.name, len(shape) if shape is not None else None,
                        _FLOATS[spec.type], floats[0].name)
    x = torch.as_tensor(dataset.x_test[:_SAMPLE] if len(dataset.x_test) else
                        dataset.x_train[:_SAMPLE])
    try:
        module.probabilities = _is_probabilities(module.raw(x))
    except Exception as err:
        raise PairError(key, f"{path}: fails on inputs of shape {tuple(x.shape)} "
                             f"({short(err, 120)}); the dataset has {dataset.num_classes} "
                             f"classes and inputs of shape {tuple(dataset.input_shape)}") from err
    return PairSide(name, False, module, source=path, device=device)
