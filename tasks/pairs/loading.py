"""``load_pair``: read both files of a user's pair, load them in their format, and check them
against the dataset before any work starts."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from tasks.pairs.base import (
    FORMATS,
    PairError,
    PairSide,
    UserPair,
    check_outputs,
    read_source,
    short,
    side_key,
)


def _load_side(name: str, path: str, data: bytes, format: str, dataset,
               model_builder: Callable[[], torch.nn.Module] | None,
               trusted: Sequence[str], device: str) -> PairSide:
    if format == "torch_state_dict":
        from tasks.pairs.torch_formats import load_state_dict_side

        return load_state_dict_side(name, path, data, model_builder, device)
    if format == "torch_export":
        from tasks.pairs.torch_formats import load_export_side

        return load_export_side(name, path, data, device)
    if format == "skops":
        from tasks.pairs.skops_format import load_skops_side

        return load_skops_side(name, path, data, trusted, dataset.num_classes, device)
    from tasks.pairs.onnx_format import load_onnx_side

    return load_onnx_side(name, path, data, dataset, device)


def load_pair(original: str, unlearned: str, format: str, dataset, *,
              model_builder: Callable[[], torch.nn.Module] | None = None,
              trusted: Sequence[str] = (), device: str = "cpu") -> UserPair:
    """Load theta (``original``) and theta_u (``unlearned``) saved in ``format``.

    Args:
        original, unlearned: local paths or pyarrow filesystem URIs ("s3://...", "file://...").
        format: one of :data:`FORMATS`.
        dataset: the :class:`tasks.data.Dataset` the models were trained on; each model is run
            on 2 of its test records and must give (2, num_classes) outputs.
        model_builder: builds the architecture a torch_state_dict is loaded into.
        trusted: type names skops may build beyond its defaults.
        device: where white-box modules live (query adapters run on the CPU).

    Every failure is a one-line :class:`PairError` naming the spec key and the file.
    """
    if format not in FORMATS:
        raise PairError("pair.format", f"{format!r} is not one of {', '.join(FORMATS)}")
    if isinstance(trusted, str):  # a lone name would otherwise be read letter by letter
        trusted = (trusted,)
    paths = {"original": str(original), "unlearned": str(unlearned)}
    sides: dict[str, PairSide] = {}
    cache: dict[str, object] = {}
    for name, path in paths.items():
        key = side_key(name)
        try:
            if path not in cache:
                data = read_source(path, key)
                if format == "posteriors":
                    from tasks.pairs.posteriors import read_table, validate

                    data = validate(read_table(path, data, key), path, key, dataset)
                cache[path] = data
            if format == "posteriors":
                from tasks.pairs.posteriors import posteriors_side

                shared = paths["original"] == paths["unlearned"]
                sides[name] = posteriors_side(name, path, cache[path], dataset, shared)
                continue
            side = _load_side(name, path, cache[path], format, dataset, model_builder,
                              trusted, device)
            check_outputs(side, dataset)
            sides[name] = side
        except PairError:
            raise
        except Exception as err:  # the net: no traceback may escape a user's file
            raise PairError(key, f"{path}: cannot be loaded as {format} "
                                 f"({type(err).__name__}: {short(err, 160)})") from err
    return UserPair(format, sides["original"], sides["unlearned"])
