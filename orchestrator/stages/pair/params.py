"""Settings of the ``pair`` section: a model pair the user brings (see the package docstring)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.attacks import ATTACKS
from tasks.pairs import FORMATS
from tasks.params import FieldError, ParamError, build, check
from tasks.registry import UnknownComponentError

UNKNOWN = "unknown"
# skops, onnx and posteriors files: no architecture needed; state dicts: one is required.
NEEDS_MODEL = ("torch_state_dict",)


@dataclass(frozen=True)
class PairAttack:
    """One attack to run on the pair: a registered name (or package.module:Class) and its
    configuration, over the attack's ``pair_defaults`` (what an attacker holding only theta
    and theta_u can use, e.g. paper knowledge)."""

    attack: str
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            ATTACKS.get(self.attack)
        except UnknownComponentError as err:
            raise FieldError("attack", str(err)) from None
        if self.threat_model().knowledge != "paper":
            raise FieldError("config", "a pair from outside comes with theta and theta_u "
                                       "alone: use the attack's paper knowledge")

    def typed_config(self, path: str = "config") -> Any:
        cls = ATTACKS.get(self.attack)
        return build(cls.Config, {**getattr(cls, "pair_defaults", {}), **self.config}, path)

    def threat_model(self):
        return ATTACKS.get(self.attack)().threat_model(self.typed_config())


@dataclass(frozen=True)
class PairParams:
    """``pair:`` — theta and theta_u from outside, what they forgot, and what to run."""

    original: str
    unlearned: str
    format: str
    # State dicts: a registered architecture {name: mlp, hidden: [64]} or
    # {factory: "package.module:function", kwargs: {...}}.
    model: dict[str, Any] | None = None
    forget: str = UNKNOWN  # a file of record ids (rows of x_train), or "unknown"
    trusted: tuple[str, ...] = ()  # skops: the types the user trusts the files to hold
    # None: every registered attack whose threat model the pair fits.
    attacks: tuple[PairAttack, ...] | None = None
    # Shadow pairs of membership inference: the membership section's settings.
    membership: dict[str, Any] = field(default_factory=dict)
    # Shadow pairs the user supplies instead of the tool training them: each
    # {original, unlearned, forget} in the pair's format (membership inference only).
    shadow: tuple[dict[str, Any], ...] = ()
    negatives: int = 500  # test records scored as never-used candidates
    candidates: int = 2000  # forget unknown: training records ranked by membership score
    figure: bool = True

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise FieldError("format", f"expected one of {', '.join(FORMATS)}, got "
                                       f"{self.format!r}")
        for name in ("original", "unlearned"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise FieldError(name, f"expected a path or URI, got {value!r}")
            object.__setattr__(self, name, _checked_path(name, value))
        check("negatives", self.negatives, low=1, integer=True)
        check("candidates", self.candidates, low=1, integer=True)
        self._check_model()
        if self.trusted and self.format != "skops":
            raise FieldError("trusted", "only skops files list trusted types")
        if not isinstance(self.forget, str) or not self.forget:
            raise FieldError("forget", f"expected a file of record ids or 'unknown', got "
                                       f"{self.forget!r}")
        if self.forget != UNKNOWN:
            object.__setattr__(self, "forget", _checked_path("forget", self.forget))
            read_forget_ids(self.forget)
        object.__setattr__(self, "shadow", tuple(_shadow_pair(i, item)
                                                 for i, item in enumerate(self.shadow)))
        if self.attacks is not None and not self.attacks:
            raise FieldError("attacks", "give at least one attack, or leave the key out to "
                                        "run every attack the pair fits")
        from orchestrator.stages.membership.params import MembershipParams

        settings = build(MembershipParams, {"cap_set_size": True, **self.membership},
                         "membership")
        if tuple(settings.scenarios) != ("single",):
            raise FieldError("membership.scenarios", "a pair from outside is attacked as it "
                                                     "is: only 'single' applies")

    def _check_model(self) -> None:
        if self.model is None:
            if self.format in NEEDS_MODEL:
                raise FieldError("model", f"required for format {self.format}: a registered "
                                          "architecture {name: mlp, hidden: [64]} or "
                                          "{factory: package.module:function}")
            return
        if not isinstance(self.model, dict):
            raise FieldError("model", f"expected a mapping, got {self.model!r}")
        if self.format not in NEEDS_MODEL:
            raise FieldError("model", f"format {self.format} carries its own architecture; "
                                      "remove pair.model")
        if ("name" in self.model) == ("factory" in self.model):
            raise FieldError("model", "give either name (a registered architecture) or "
                                      "factory (package.module:function)")
        config = model_config(self.model)
        from tasks.models import MODELS

        try:
            entry = MODELS.get(config.name)
        except UnknownComponentError as err:
            raise FieldError("model.name", str(err)) from None
        if entry.family != "torch":
            raise FieldError("model.name", f"{config.name!r} is a scikit-learn model; bring "
                                           "scikit-learn models as skops files")
        config.typed_params("model")

    @property
    def forget_known(self) -> bool:
        return self.forget != UNKNOWN

    def membership_params(self):
        from orchestrator.stages.membership.params import MembershipParams

        # The data is whatever the user brought: set_size is capped to it unless they say not.
        return build(MembershipParams, {"cap_set_size": True, **self.membership},
                     "pair.membership")


def _shadow_pair(i: int, item: Any) -> dict[str, Any]:
    """One supplied shadow pair, its files checked and its forget ids read."""
    where = f"shadow[{i}]"
    if not isinstance(item, dict) or set(item) != {"original", "unlearned", "forget"}:
        raise FieldError(where, "expected {original: FILE, unlearned: FILE, forget: FILE} in "
                                "the pair's format")
    out = {k: _checked_path(f"{where}.{k}", str(item[k])) for k in ("original", "unlearned",
                                                                    "forget")}
    try:
        out["ids"] = read_forget_ids(out["forget"])
    except FieldError as err:
        raise FieldError(f"{where}.{err.field}", err.message) from None
    return out


def model_config(model: dict[str, Any]):
    """``pair.model`` as a :class:`tasks.models.ModelConfig` (a factory is the registered
    ``factory`` model)."""
    from tasks.models import ModelConfig

    rest = {k: v for k, v in model.items() if k != "name"}
    if "factory" in model:
        return ModelConfig("factory", rest)
    return ModelConfig(str(model["name"]), rest)


def _checked_path(name: str, value: str) -> str:
    """An existing local file (made absolute: workers may run elsewhere) or a URI whose
    object exists."""
    if "://" in value:
        import pyarrow.fs as pafs

        try:
            fs, inner = pafs.FileSystem.from_uri(value)
            info = fs.get_file_info(inner)
        except Exception as err:  # noqa: BLE001  (any filesystem failure is the same refusal)
            raise FieldError(name, f"{value}: cannot be reached ({err})") from None
        if info.type != pafs.FileType.File:
            raise FieldError(name, f"{value}: no such file")
        return value
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise FieldError(name, f"{value}: no such file" if not path.exists()
                         else f"{value}: is a folder, not a file")
    return str(path)


_SEPARATORS = re.compile(r"[\s,;]+")


def read_forget_ids(path: str) -> tuple[int, ...]:
    """Record ids (rows of x_train) separated by newlines, commas or spaces; ``#`` starts a
    comment; an optional header line naming the column is skipped."""
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise FieldError("forget", f"{path}: not a text file of record ids") from None
    ids: list[int] = []
    header = ""
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if number == 1 and line and not line[0].isdigit() \
                and _SEPARATORS.split(line)[0].isidentifier():
            header = f" (its first line, {line!r}, was read as a column header)"
            continue
        if not line:
            continue
        for token in _SEPARATORS.split(line):
            if not token:
                continue
            if not token.isdigit():
                raise FieldError("forget", f"{path}: line {number}: {token!r} is not a record "
                                           "id (a row number of x_train, from 0)")
            ids.append(int(token))
    if not ids:
        raise FieldError("forget", f"{path}: holds no record ids{header}")
    seen: set[int] = set()
    for i in ids:
        if i in seen:
            raise FieldError("forget", f"{path}: record id {i} appears twice")
        seen.add(i)
    return tuple(ids)


def _read_bytes(path: str) -> bytes:
    if "://" in path:
        import pyarrow.fs as pafs

        fs, inner = pafs.FileSystem.from_uri(path)
        with fs.open_input_stream(inner) as stream:
            return stream.read()
    return Path(path).read_bytes()


def check_ids(ids: tuple[int, ...], n_train: int) -> None:
    bad = [i for i in ids if i >= n_train]
    if bad:
        raise ParamError("pair.forget", f"record id {bad[0]} is not a row of x_train (it has "
                                        f"{n_train} rows, numbered from 0)")
