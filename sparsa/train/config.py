"""Training recipe: dataclasses and TOML/JSON loading.

A recipe file has top-level keys (``name``, ``seed``, ``steps``, ...) and the tables
``[model]``, ``[data]``, ``[optim]``, ``[eval]`` and ``[card]``; every key is optional
(defaults below) and an unknown key is an error. ``recipes/sparsa-tiny.toml`` is the recipe
of the shipped model.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


ATTENTIONS = ("dense", "nsa")


@dataclass
class NSAModelConfig:
    """Native Sparse Attention geometry (``[model.nsa]``; used when ``model.attention = "nsa"``).

    Compressed tokens summarise ``block`` keys every ``stride``; each query reads ``n_select``
    blocks of ``sel_block`` keys (the first ``n_forced_init`` and the ``n_forced_local`` most
    recent always among them) and its last ``window`` keys; ``compress`` is "mlp" (learned, hidden
    width ``compress_hidden``, default 4 * head_dim) or "mean". ``gate_bias``: the three gates'
    starting logits [compression, selection, window] (unset: 0, each gate at 0.5).
    ``separate_kv``: each branch projects its own keys and values (the NSA paper's choice, against
    one branch learning a shortcut the others then share); default one projection for all three.
    Defaults otherwise: the NSA paper's.
    """

    block: int = 32
    stride: int = 16
    sel_block: int = 64
    n_select: int = 16
    window: int = 512
    n_forced_init: int = 1
    n_forced_local: int = 2
    compress: str = "mlp"
    compress_hidden: int | None = None
    gate_bias: list[float] | None = None
    separate_kv: bool = False


@dataclass
class ModelConfig:
    """Llama-architecture decoder (RMSNorm, RoPE, SwiGLU, grouped-query attention).

    ``attention``: "dense" (transformers' SDPA attention) or "nsa" (trainable Native Sparse
    Attention in every layer, geometry in ``nsa``).
    """

    hidden_size: int = 256
    num_layers: int = 8
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 768
    rope_theta: float = 500_000.0
    max_position_embeddings: int = 32768
    tie_embeddings: bool = True
    rms_norm_eps: float = 1e-5
    init_std: float = 0.02
    attention: str = "dense"
    nsa: NSAModelConfig = field(default_factory=NSAModelConfig)


def param_extremes(params: dict[str, Any]) -> list[dict[str, Any]]:
    """``params`` with every ``[low, high]`` range set to its low end, then to its high end."""
    lo = {k: (v[0] if isinstance(v, list) else v) for k, v in params.items()}
    hi = {k: (v[1] if isinstance(v, list) else v) for k, v in params.items()}
    return [lo, hi]


def draw_params(params: dict[str, Any], rng: Any) -> dict[str, Any]:
    """``params`` with every ``[low, high]`` range replaced by an integer drawn from ``rng``."""
    return {k: (rng.randint(v[0], v[1]) if isinstance(v, list) else v) for k, v in params.items()}


@dataclass
class DataConfig:
    """The training stream: language modelling on stdlib text mixed with task instances.

    Sequence length follows ``curriculum``: [[start_fraction_of_steps, seq_len], ...].
    A task sequence is [BOS] prompt answer [EOS] followed by language-modelling text up to the
    sequence length; the prompt takes ``length_fraction`` (uniform range) of the room left.
    Loss weights: every predicted token 1, answer tokens (and their EOS) ``answer_weight``.
    A share ``lm_repeat_fraction`` of the language-modelling windows (whole sequences and the
    text after a task) has earlier spans copied in again, so in-context copying is learnt early.
    ``task_params`` sets task parameters for training instances; an integer parameter given as
    ``[low, high]`` is drawn uniformly (both ends included) for every instance, so a hard task
    (four-hop variable tracking, say) is also seen in its easier forms.
    """

    tokenizer: str = "default"
    lm_fraction: float = 0.25
    lm_repeat_fraction: float = 0.5
    task_weights: dict[str, float] = field(default_factory=lambda: {
        "niah_single": 1.0, "niah_multikey": 2.0, "niah_multivalue": 1.0, "niah_multiquery": 2.0,
        "variable_tracking": 2.0, "common_words": 0.5, "story_retrieval": 1.0, "story_multihop": 1.0,
        "story_filter": 1.0, "doc_qa": 1.0})
    task_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    length_fraction: list[float] = field(default_factory=lambda: [0.3, 1.0])
    answer_weight: float = 50.0
    curriculum: list[list[float]] = field(default_factory=lambda: [[0.0, 512], [0.1, 1024], [0.25, 2048],
                                                                   [0.45, 4096], [0.8, 8192]])
    tokens_per_step: int = 65536
    micro_batch_tokens: int = 32768
    num_workers: int = 8
    lm_max_files: int | None = None


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay to ``min_lr_ratio * lr``."""

    lr: float = 1.5e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0


@dataclass
class EvalConfig:
    """Quick evaluation during training (greedy generation on fresh eval-split instances).

    Every ``every`` steps (0: never) at the current sequence length less 64 tokens.
    """

    every: int = 500
    tasks: list[str] = field(default_factory=lambda: ["niah_single", "niah_multikey", "niah_multiquery",
                                                      "variable_tracking"])
    samples: int = 8
    batch_size: int = 8


#: The model card's prompt lengths when ``card.lengths`` is unset (those within the model's context).
CARD_LENGTHS = (1024, 2048, 4096, 8192, 16384)


@dataclass
class CardConfig:
    """The final evaluation written into the model card.

    ``tasks``: unset = every registered task. ``lengths``: unset = those of ``CARD_LENGTHS``
    within ``model.max_position_embeddings``. Each task is evaluated at the lengths of at least
    its minimum length.
    """

    tasks: list[str] | None = None
    lengths: list[int] | None = None
    samples: int = 40
    batch_size: int = 8
    seed: int = 1234


@dataclass
class TrainConfig:
    name: str = "sparsa-tiny"
    seed: int = 0
    steps: int = 4000
    precision: str = "auto"
    compile: bool = False
    log_every: int = 10
    ckpt_every: int = 200
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    card: CardConfig = field(default_factory=CardConfig)

    def validate(self) -> TrainConfig:
        """Check ranges and cross-field rules; returns self."""
        from ..eval.api import get_task, list_tasks   # local: sparsa.eval loads torch, and the recipe reads without it

        m, d, o = self.model, self.data, self.optim
        if self.steps < 1:
            raise ValueError(f"steps: must be >= 1, got {self.steps}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision: must be auto, bf16 or fp32, got {self.precision!r}")
        for key in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
                    "max_position_embeddings"):
            if getattr(m, key) < 1:
                raise ValueError(f"model.{key}: must be >= 1, got {getattr(m, key)}")
        for key in ("rope_theta", "rms_norm_eps", "init_std"):
            _check_number(f"model.{key}", getattr(m, key), 0.0, low_open=True)
        for key in ("tokens_per_step", "micro_batch_tokens"):
            if getattr(d, key) < 1:
                raise ValueError(f"data.{key}: must be >= 1, got {getattr(d, key)}")
        if d.num_workers < 0:
            raise ValueError(f"data.num_workers: must be >= 0 (0: load in the training process), got {d.num_workers}")
        if d.lm_max_files is not None and d.lm_max_files < 1:
            raise ValueError(f"data.lm_max_files: must be >= 1 or unset (every file), got {d.lm_max_files}")
        if m.num_heads % m.num_kv_heads:
            raise ValueError(f"model.num_kv_heads ({m.num_kv_heads}) must divide model.num_heads ({m.num_heads})")
        if m.head_dim % 2:
            raise ValueError(f"model.head_dim: must be even for RoPE, got {m.head_dim}")
        if m.attention not in ATTENTIONS:
            raise ValueError(f"model.attention: must be one of {', '.join(ATTENTIONS)}, got {m.attention!r}")
        lengths = _check_curriculum(d, m.max_position_embeddings)
        if m.attention == "nsa":
            _check_nsa(m.nsa, lengths)
        if not 0.0 <= d.lm_fraction <= 1.0:
            raise ValueError(f"data.lm_fraction: must be in [0, 1], got {d.lm_fraction}")
        if not 0.0 <= d.lm_repeat_fraction <= 1.0:
            raise ValueError(f"data.lm_repeat_fraction: must be in [0, 1], got {d.lm_repeat_fraction}")
        _check_number("data.answer_weight", d.answer_weight, 0.0)
        known = list_tasks()
        for table in ("task_weights", "task_params"):
            for name in getattr(d, table):
                if name not in known:
                    raise ValueError(f"data.{table}.{name}: unknown task {name!r}; available: {', '.join(known)}")
        for name, w in d.task_weights.items():
            _check_number(f"data.task_weights.{name}", w, 0.0)
        if d.lm_fraction < 1.0 and not any(w > 0 for w in d.task_weights.values()):
            raise ValueError("data.task_weights: needs a positive weight unless data.lm_fraction is 1")
        for name in list(d.task_weights) + list(d.task_params):
            for key, value in d.task_params.get(name, {}).items():
                if isinstance(value, list):
                    ok = (len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
                          and value[0] <= value[1])
                    if not ok:
                        raise ValueError(f"data.task_params.{name}.{key}: a range must be [low, high] integers "
                                         f"with low <= high, got {value}")
            for params in param_extremes(d.task_params.get(name, {})):
                get_task(name, **params)
        lf = d.length_fraction
        if not (isinstance(lf, (list, tuple)) and len(lf) == 2 and all(_is_number(x) for x in lf)
                and 0.0 < lf[0] <= lf[1] <= 1.0):
            raise ValueError(f"data.length_fraction: must be [low, high] with 0 < low <= high <= 1, got {lf!r}")
        _check_number("optim.lr", o.lr, 0.0, low_open=True)
        _check_number("optim.min_lr_ratio", o.min_lr_ratio, 0.0, 1.0)
        if o.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps: must be >= 0, got {o.warmup_steps}")
        _check_number("optim.weight_decay", o.weight_decay, 0.0)
        _check_number("optim.beta1", o.beta1, 0.0, 1.0, high_open=True)
        _check_number("optim.beta2", o.beta2, 0.0, 1.0, high_open=True)
        _check_number("optim.eps", o.eps, 0.0, low_open=True)
        _check_number("optim.grad_clip", o.grad_clip, 0.0, low_open=True,
                      why=" (the largest gradient norm; 0 would zero every update)")
        if self.log_every < 1 or self.ckpt_every < 1:
            raise ValueError("log_every, ckpt_every: must be >= 1")
        _check_eval(self.eval, known)
        _check_card(self.card, self.card_lengths(), known, m.max_position_embeddings)
        return self

    def card_lengths(self) -> list[int]:
        """The model card's prompt lengths: ``card.lengths``, or by default those of ``CARD_LENGTHS``
        within ``model.max_position_embeddings``."""
        if self.card.lengths is not None:
            return list(self.card.lengths)
        return [L for L in CARD_LENGTHS if L <= self.model.max_position_embeddings]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_number(key: str, value: Any, low: float, high: float = math.inf, *, low_open: bool = False,
                  high_open: bool = False, why: str = "") -> None:
    """Refuse a value that is not a finite number within [low, high] (ends open as asked)."""
    ok = (_is_number(value) and math.isfinite(value) and (value > low if low_open else value >= low)
          and (value < high if high_open else value <= high))
    if ok:
        return
    if high == math.inf:
        want = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        want = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    raise ValueError(f"{key}: must be {want}{why}, got {value!r}")


def _check_curriculum(d: DataConfig, max_positions: int) -> list[int]:
    """Refuse a malformed ``data.curriculum``; returns its sequence lengths."""
    cur = d.curriculum
    if not isinstance(cur, (list, tuple)) or not cur:
        raise ValueError(f"data.curriculum: must be a list of [start_fraction, seq_len] stages, got {cur!r}")
    for i, stage in enumerate(cur):
        if not (isinstance(stage, (list, tuple)) and len(stage) == 2 and all(_is_number(x) for x in stage)):
            raise ValueError(f"data.curriculum[{i}]: a stage must be [start_fraction, seq_len], got {stage!r}")
        if not float(stage[1]).is_integer():
            raise ValueError(f"data.curriculum[{i}]: the sequence length must be a whole number, got {stage[1]!r}")
    if cur[0][0] != 0:
        raise ValueError("data.curriculum: must start with a stage at fraction 0")
    fr = [s[0] for s in cur]
    if fr != sorted(fr) or any(not 0 <= f < 1 for f in fr):
        raise ValueError(f"data.curriculum: stage fractions must increase within [0, 1), got {fr}")
    for _, L in cur:
        if int(L) < 16 or int(L) > max_positions:
            raise ValueError(f"data.curriculum: sequence length {L} must be in [16, "
                             f"model.max_position_embeddings={max_positions}]")
        if d.tokens_per_step < L:
            raise ValueError(f"data.tokens_per_step ({d.tokens_per_step}) must be >= every sequence length ({L})")
    return [int(L) for _, L in cur]


def _check_task_names(key: str, names: Any, known: list[str]) -> None:
    """Refuse a task list that is not a list of distinct registered task names."""
    if not isinstance(names, (list, tuple)):
        raise ValueError(f"{key}: expected a list of task names, got {names!r}")
    for name in names:
        if name not in known:
            raise ValueError(f"{key}: unknown task {name!r}; available: {', '.join(known)}")
    if len(set(names)) < len(names):
        raise ValueError(f"{key}: lists a task twice, got {list(names)}")


def _check_eval(e: EvalConfig, known: list[str]) -> None:
    """Refuse ``[eval]`` settings the quick evaluation cannot run with."""
    if e.every < 0:
        raise ValueError(f"eval.every: must be >= 0 (0: no evaluation during training), got {e.every}")
    for key in ("samples", "batch_size"):
        if getattr(e, key) < 1:
            raise ValueError(f"eval.{key}: must be >= 1, got {getattr(e, key)}")
    _check_task_names("eval.tasks", e.tasks, known)


def _check_card(c: CardConfig, lengths: list[int], known: list[str], max_positions: int) -> None:
    """Refuse ``[card]`` settings the card evaluation after training cannot run with; ``lengths``
    are the card's (``TrainConfig.card_lengths``)."""
    from ..eval.tasks import describe_tasks  # local: loads the task registry (torch)

    for key in ("samples", "batch_size"):
        if getattr(c, key) < 1:
            raise ValueError(f"card.{key}: must be >= 1, got {getattr(c, key)}")
    if c.tasks is not None:
        if not c.tasks:
            raise ValueError("card.tasks: is empty; list the tasks to evaluate, or leave it out for every task")
        _check_task_names("card.tasks", c.tasks, known)
    if c.lengths is None:
        if not lengths:
            raise ValueError(f"card.lengths: unset, and none of the default lengths {list(CARD_LENGTHS)} is within "
                             f"model.max_position_embeddings ({max_positions}); set card.lengths")
    else:
        if not c.lengths:
            raise ValueError("card.lengths: is empty; list the prompt lengths to evaluate (run with --no-card "
                             "for no card evaluation)")
        if len(set(c.lengths)) < len(c.lengths):
            raise ValueError(f"card.lengths: lists a length twice, got {list(c.lengths)}")
        too_long = [L for L in c.lengths if L > max_positions]
        if too_long:
            raise ValueError(f"card.lengths: {too_long} exceed model.max_position_embeddings ({max_positions})")
    need = {t: d["min_length"] for t, d in describe_tasks().items() if c.tasks is None or t in c.tasks}
    for task, n in need.items():
        if n > max(lengths):
            which = "card.tasks" if c.tasks is not None else "card.tasks (unset: every task)"
            raise ValueError(f"{which}: task {task!r} needs at least {n} tokens, more than every card length "
                             f"{lengths}; add a longer card length or leave the task out")
    for L in lengths:
        if L < min(need.values()):
            raise ValueError(f"card.lengths: {L} is shorter than every card task needs "
                             f"(at least {min(need.values())} tokens)")


def _check_nsa(n: NSAModelConfig, lengths: list[int]) -> None:
    """Refuse an NSA geometry the kernels cannot run or the curriculum's lengths do not fit."""
    from ..ops.nsa import NSAConfig  # local: the recipe reads without torch

    if n.compress_hidden is not None and (isinstance(n.compress_hidden, bool) or not isinstance(n.compress_hidden, int)
                                          or n.compress_hidden < 1):
        raise ValueError(f"model.nsa.compress_hidden: must be a positive integer or unset, got {n.compress_hidden!r}")
    if n.compress not in ("mlp", "mean"):
        raise ValueError(f"model.nsa.compress: must be 'mlp' or 'mean', got {n.compress!r}")
    if not isinstance(n.separate_kv, bool):
        raise ValueError(f"model.nsa.separate_kv: must be true or false, got {n.separate_kv!r}")
    if n.gate_bias is not None:
        from ..nn.nsa import check_gate_bias  # local: the recipe reads without torch

        check_gate_bias("model.nsa.gate_bias", n.gate_bias)
    try:
        NSAConfig(block=n.block, stride=n.stride, sel_block=n.sel_block, n_select=n.n_select, window=n.window,
                  n_forced_init=n.n_forced_init, n_forced_local=n.n_forced_local)
    except (TypeError, ValueError) as e:  # NSAConfig's checks name the field
        raise ValueError(f"model.nsa.{e}") from None
    for key in ("block", "stride", "sel_block"):
        bad = [L for L in lengths if L % getattr(n, key)]
        if bad:
            raise ValueError(f"model.nsa.{key}: {getattr(n, key)} must divide every sequence length of "
                             f"data.curriculum, not {bad}")
    if n.window > max(lengths):
        raise ValueError(f"model.nsa.window: {n.window} is longer than the longest training sequence "
                         f"({max(lengths)} tokens of data.curriculum)")


# nested tables of each recipe section
_TABLES: dict[tuple[type, str], type] = {}


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise TypeError(f"{where or 'recipe'}: expected a table, got {type(data).__name__}")
    if not _TABLES:
        _TABLES.update({(TrainConfig, "model"): ModelConfig, (TrainConfig, "data"): DataConfig,
                        (TrainConfig, "optim"): OptimConfig, (TrainConfig, "eval"): EvalConfig,
                        (TrainConfig, "card"): CardConfig, (ModelConfig, "nsa"): NSAModelConfig})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        here = f"{where}.{k}" if where else k
        if k not in fields:
            raise ValueError(f"{here}: unknown recipe key; allowed: {', '.join(fields)}")
        sub = _TABLES.get((cls, k))
        if sub is None:
            _check_value(here, v, str(fields[k].type))
        kwargs[k] = _from_dict(sub, v, here) if sub is not None else v
    return cls(**kwargs)


def _check_value(where: str, value: Any, ann: str) -> None:
    """Refuse a recipe value whose type does not fit the field's annotation (an int field takes
    no float, bool or string; a float field takes ints too; lists and tables are checked inside)."""
    ann = ann.replace(" ", "")
    if ann.endswith("|None"):
        if value is None:
            return
        ann = ann[:-len("|None")]
    expected = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
    if ann == "bool":
        ok = isinstance(value, bool)
    elif ann == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif ann == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif ann == "str":
        ok = isinstance(value, str)
    elif ann.startswith("list[") and ann.endswith("]"):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        for i, x in enumerate(value):
            _check_value(f"{where}[{i}]", x, ann[len("list["):-1])
        return
    elif ann.startswith("dict[str,") and ann.endswith("]"):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a table, got {value!r}")
        for k, x in value.items():
            _check_value(f"{where}.{k}", x, ann[len("dict[str,"):-1])
        return
    else:
        return  # Any, or a type whose own validation decides
    if not ok:
        raise ValueError(f"{where}: expected {expected[ann]}, got {value!r}")


def with_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """A recipe dict with every key the recipe leaves out set to its default (for comparing a
    checkpoint's recipe, which may predate a key, with the current one)."""
    return _from_dict(TrainConfig, data, "").to_dict()


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """A validated ``TrainConfig`` from nested dicts (unknown keys are errors)."""
    return _from_dict(TrainConfig, data, "").validate()


def _read_table(p: Path) -> tuple[dict[str, Any], str]:
    """(settings table, text) of one recipe file (no ``base`` resolution)."""
    if p.is_dir():
        raise FileNotFoundError(f"recipe: {p} is a directory; name a recipe file (.toml or .json) in it")
    if not p.is_file():
        raise FileNotFoundError(f"recipe: no such file {p}")
    text = p.read_text()
    if p.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ModuleNotFoundError:
                raise ValueError("recipe: reading TOML on Python 3.10 needs the `tomli` package; "
                                 "or use a .json recipe") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"recipe: {p} is not valid TOML: {e}") from None
    elif p.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"recipe: {p} is not valid JSON: {e}") from None
    else:
        raise ValueError(f"recipe: expected a .toml or .json file, got {p.name}")
    if not isinstance(data, dict):
        raise ValueError(f"recipe: {p} must hold a table of settings, got {type(data).__name__}")
    return data, text


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s keys on top; tables merge key by key, anything else is replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolve(p: Path, data: dict[str, Any], chain: tuple[Path, ...]) -> dict[str, Any]:
    """Recipe file ``p``'s table ``data`` on top of its ``base`` chain, if it names one."""
    if "base" not in data:
        return data
    data = dict(data)
    base = data.pop("base")
    if not isinstance(base, str) or not base:
        raise ValueError(f"base: expected the path of another recipe file (relative to {p.name}), got {base!r}")
    bp = (p.parent / base).resolve()
    if bp in chain or bp == p.resolve():
        raise ValueError(f"base: {p.name} inherits from itself through {' -> '.join(c.name for c in (*chain, bp))}")
    if not bp.is_file():
        raise FileNotFoundError(f"base: {p.name} names {base!r}, but there is no such file {bp}")
    return _merge(_resolve(bp, _read_table(bp)[0], (*chain, p.resolve())), data)


def load_recipe(path: str | Path) -> tuple[TrainConfig, str]:
    """(config, recipe text) from a ``.toml`` or ``.json`` recipe file.

    A recipe may start from another with ``base = "other.toml"`` (a path relative to its own
    file): the base's settings apply, with this file's keys on top (tables merged key by key),
    so a family of recipes states each member's differences only. The text returned is then
    the fully resolved recipe as JSON (what a run saves beside its checkpoint, self-contained);
    otherwise it is the file's own text.
    """
    p = Path(path)
    own, text = _read_table(p)
    data = _resolve(p, own, ())
    cfg = config_from_dict(data)
    return cfg, (json.dumps(data, indent=2) + "\n" if "base" in own else text)


def recipe_suffix(text: str, path: str | Path) -> str:
    """The file suffix that recipe ``text`` (from :func:`load_recipe` on ``path``) is saved under:
    ``.json`` for a resolved recipe (a TOML file cannot start with ``{``), else the file's own."""
    return ".json" if text.lstrip().startswith("{") else Path(path).suffix
