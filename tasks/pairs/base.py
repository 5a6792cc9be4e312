"""The types of a user's model pair, the error they raise, and what every format shares.

A pair is theta (the original model) and theta_u (the unlearned one), each a :class:`PairSide`.
Every side answers :meth:`PairSide.logits` on records of the dataset; white-box sides also carry
the real ``torch.nn.Module`` (parameters, autograd), query sides a parameter-free adapter module.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMATS = ("torch_state_dict", "torch_export", "skops", "onnx", "posteriors")
WHITE_BOX = {"torch_state_dict", "torch_export"}  # parameters available
QUERY = {"skops", "onnx"}  # black-box but can be queried on any input

# Records per forward pass: bounds memory on large splits without slowing small ones.
BATCH = 1024
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class PairError(ValueError):
    """A pair that cannot be loaded or used. ``str(err)`` is one line: ``<key>: <message>``."""

    def __init__(self, key: str, message: str) -> None:
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}")


def side_key(name: str) -> str:
    """The spec key that names one side's file ("pair.original" / "pair.unlearned")."""
    return f"pair.{name}"


def short(err: BaseException, limit: int = 200) -> str:
    """One line from an exception: library messages span lines and carry terminal colours, and
    the CLI prints exactly one line."""
    text = _ANSI.sub("", str(err)).strip()
    # torch's weights-only refusal hides the useful sentence after a page of advice.
    found = re.search(r"Unsupported global: GLOBAL [\w.]+", text)
    if found:
        text = found.group(0).replace("GLOBAL ", "")
    elif "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    if " " not in text:  # a bare key or number ("101") says nothing without its type
        text = f"{type(err).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def not_a(key: str, path: str, what: str) -> Iterator[None]:
    """Report whatever goes wrong while parsing ``path`` as "<path>: not a <what> (...)".

    Parsers of files from outside fail in more ways than can be listed (zip, protobuf, pickle,
    JSON); each means the file is not what the format promised, and no traceback may escape."""
    try:
        yield
    except PairError:
        raise
    except Exception as err:
        raise PairError(key, f"{path}: not {what} ({short(err)})") from err


def read_source(path: str, key: str) -> bytes:
    """The bytes of a local file or of a pyarrow filesystem URI (anything with "://")."""
    if "://" in path:
        import pyarrow.fs as pafs

        try:
            fs, inner = pafs.FileSystem.from_uri(path)
            info = fs.get_file_info(inner)
            if info.type == pafs.FileType.NotFound:
                raise PairError(key, f"{path}: no such file")
            if info.type != pafs.FileType.File:
                raise PairError(key, f"{path}: not a file")
            with fs.open_input_stream(inner) as stream:
                return stream.read()
        except PairError:
            raise
        except Exception as err:
            raise PairError(key, f"{path}: cannot be read ({short(err)})") from err
    local = Path(path).expanduser()
    if not local.exists():
        raise PairError(key, f"{path}: no such file")
    if not local.is_file():
        raise PairError(key, f"{path}: not a file")
    try:
        data = local.read_bytes()
    except OSError as err:
        raise PairError(key, f"{path}: cannot be read ({err.strerror or short(err)})") from err
    if not data:
        raise PairError(key, f"{path}: empty file (0 bytes)")
    return data


def suffix(path: str) -> str:
    """The lower-case extension of a path or URI (query strings and folders ignored)."""
    return Path(path.split("?", 1)[0]).suffix.lower()


def buffer(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


@dataclass
class PairSide:
    """One model of the pair.

    ``module`` is None only for posteriors. White-box: the real module (parameters, autograd
    through inputs and parameters). skops/onnx: a parameter-free adapter mapping an
    (n, *input_shape) float tensor to logits (n, C) = log(clip(proba, 1e-12)), forward only.
    ``estimator`` is the loaded scikit-learn estimator (skops only). ``source`` is the file the
    side came from; ``posteriors`` holds the stored probabilities (posteriors only).
    """

    name: str  # "original" | "unlearned"
    white_box: bool
    module: torch.nn.Module | None
    estimator: Any = None
    source: str = ""
    device: str = "cpu"
    posteriors: Any = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return side_key(self.name)

    def records(self, split: str, dataset) -> np.ndarray:
        """The record ids of ``split`` this side can answer for: every record of a model, the
        stored ones of posteriors."""
        if self.posteriors is not None:
            return self.posteriors.available(split)
        return np.arange(len(getattr(dataset, f"y_{split}")))

    def logits(self, split: str, ids: np.ndarray, dataset) -> np.ndarray:
        """(len(ids), C) float32 logits on ``dataset.x_{split}[ids]``; for posteriors: the stored
        probabilities of those record ids (log, clipped); PairError naming the file and the
        first missing ids when the file lacks some."""
        if split not in ("train", "test"):
            raise PairError(self.key, f"split {split!r}: expected 'train' or 'test'")
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if self.posteriors is not None:
            return self.posteriors.logits(split, ids)
        if self.module is None:
            raise PairError(self.key, f"{self.source}: holds no model to run")
        x = getattr(dataset, f"x_{split}")
        outside = ids[(ids < 0) | (ids >= len(x))]
        if len(outside):
            raise PairError(self.key, f"record_id {outside[0]} is outside the {split} split's "
                                      f"{len(x)} records")
        return forward(self.module, x[ids], self.device,
                       dataset.num_classes)


def forward(module: torch.nn.Module, x: np.ndarray, device: str = "cpu",
            num_classes: int = 0) -> np.ndarray:
    """Logits of ``module`` on ``x`` (n, *input_shape), in batches, without gradients."""
    outs = []
    with torch.no_grad():
        for start in range(0, len(x), BATCH):
            chunk = torch.as_tensor(np.asarray(x[start:start + BATCH], dtype=np.float32))
            outs.append(module(chunk.to(device)).detach().float().cpu().numpy())
    if not outs:  # no records: estimators refuse empty inputs, so no call is made
        return np.zeros((0, num_classes), np.float32)
    return np.concatenate(outs).astype(np.float32)


def check_outputs(side: PairSide, dataset) -> None:
    """Run the side on 2 records and require (2, num_classes) outputs: a model for another
    dataset must fail here, at load, not deep inside an attack."""
    x = dataset.x_test[:2] if len(dataset.x_test) >= 2 else dataset.x_train[:2]
    wanted = f"the dataset has {dataset.num_classes} classes and inputs of shape " \
             f"{tuple(dataset.input_shape)}"
    try:
        out = forward(side.module, x, side.device)
    except PairError:
        raise
    except Exception as err:
        raise PairError(side.key, f"{side.source}: fails on inputs of shape {tuple(x.shape)} "
                                  f"({short(err, 120)}); {wanted}") from err
    if out.shape != (len(x), dataset.num_classes):
        raise PairError(side.key, f"{side.source}: gives outputs of shape {tuple(out.shape)}; "
                                  f"{wanted}")


@dataclass
class UserPair:
    """A user's pair: theta (``original``) and theta_u (``unlearned``) in one ``format``."""

    format: str
    original: PairSide
    unlearned: PairSide

    @property
    def white_box(self) -> bool:
        return self.format in WHITE_BOX

    @property
    def queryable(self) -> bool:
        """White-box or a QUERY format: attacks may run the models on inputs they craft."""
        return self.format in WHITE_BOX or self.format in QUERY

    def records(self, split: str, dataset) -> np.ndarray:
        """Record ids of ``split`` both sides answer for (stored posteriors may hold few)."""
        return np.intersect1d(self.original.records(split, dataset),
                              self.unlearned.records(split, dataset))
