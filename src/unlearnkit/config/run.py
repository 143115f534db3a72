"""The run's option models: one typed section per stage, and which data sets a run needs.

Sections follow the data flow: ``model`` → ``data`` → ``adapter`` → ``method`` → ``train``
→ ``eval`` → ``output``. Every field has a default that reproduces the paper's setting
(Section 4.1) where the paper gives one; each run writes the fully resolved config, so a run
is reproducible from its output directory alone. Nothing here imports torch.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from unlearnkit.config.plugins import load_plugin
from unlearnkit.config.sources import SourceConfig, check_qa_template
from unlearnkit.config.suites import SUITES
from unlearnkit.errors import UnlearnkitError, unknown_name


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    name: str = Field("EleutherAI/gpt-neo-125m", description="hub id, local directory, .gguf file or 'smollm2'")
    revision: str | None = None
    gguf_file: str | None = Field(None, description="GGUF file inside a directory named by `name`")
    tokenizer: str | None = Field(None, description="tokenizer location when it differs from the model's")
    # float64: slow, for comparisons that must not depend on a CPU's float32 rounding (tests, exact studies)
    dtype: Literal["float32", "bfloat16", "float16", "float64"] = "float32"
    trust_remote_code: bool = False


class DataConfig(Section):
    dir: str | None = Field(None, description="data directory; default $UNLEARNKIT_DATA or ~/.cache/unlearnkit/data")
    seq_len: int = Field(200, ge=2, description="tokens per sequence")
    forget: SourceConfig = Field(default_factory=lambda: SourceConfig(source="jang", n=32, set=0))
    retain: SourceConfig | None = Field(default_factory=lambda: SourceConfig(source="wikitext"))
    validation: SourceConfig | None = Field(
        default_factory=lambda: SourceConfig(source="tdec", split="val", n=32, seed=0),
        description="held-out set whose mean EL and MA are the forgetting thresholds",
    )
    requests: list[SourceConfig] = Field(
        default_factory=list, description="later deletion requests: each forget set unlearned in turn, on the model "
                                          "the one before left (unlearnkit.sequential)")


class MethodConfig(Section):
    """The unlearning method and, beside ``name``, its own options (``method.beta`` for NPO, ...), validated by the
    method's ``Options`` (:mod:`unlearnkit.methods`)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = Field("ihl", description="ga | gd | ihl | npo | simnpo | rmu | level, or your own: "
                                         "module.path:Class or path/to/file.py:Class (docs/extending.md)")
    retain_weight: float = Field(1.0, ge=0.0, description="weight of the retain term (Eq. 5 uses 1)")
    retain_kind: Literal["lm", "kl"] = Field(
        "lm", description="the retain term: lm = LM loss on the retain batch (the paper's); kl = KL divergence "
                          "from the model before unlearning on the retain batch (holds a frozen copy of it)")
    sam_rho: float = Field(0.0, ge=0.0, description="SAM unlearning (Fan et al., 2025): the forget term's gradient "
                                                    "taken at θ + ρ·g/‖g‖ (0: off; the retain term unperturbed)")
    meta_relearn: float = Field(0.0, ge=0.0, description="meta-unlearning (after MUDMAN, 2025): the forget term's "
                                                         "gradient taken after a simulated relearning step of this "
                                                         "length on the forget rows, θ − η·g_r/‖g_r‖ (0: off)")
    disruption_mask: bool = Field(False, description="disruption masking (MUDMAN, 2025): the forget term's gradient "
                                                     "kept only on weights where it has the sign of the retain "
                                                     "term's gradient (needs a method with a retain term)")

    @model_validator(mode="after")
    def _options_fit_the_method(self) -> MethodConfig:
        if self.sam_rho > 0 and self.meta_relearn > 0:
            raise ValueError("method.sam_rho and method.meta_relearn each move the point where the forget gradient "
                             "is taken; set only one of them")
        try:
            method = self.method_class()
        except UnlearnkitError as error:
            raise ValueError(str(error).rstrip(".")) from None
        options_model = getattr(method, "Options", None)
        if not (isinstance(options_model, type) and issubclass(options_model, BaseModel)) or \
                not hasattr(method, "step_loss"):
            raise ValueError(f"{self.name} is not an unlearning method; subclass "
                             "unlearnkit.methods.UnlearningMethod (docs/extending.md)")
        given = self.given_options()
        own = method.Options.model_fields
        for key in given:
            if key not in own:
                options = ", ".join(f"method.{k}" for k in own) or "none"
                raise ValueError(f"method.{key} is not an option of {self.name} (its options: {options}); remove it")
        try:
            method.Options(**given)
        except ValidationError as error:
            problem = error.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            raise ValueError(f"method.{where}: {problem['msg']}") from None
        if self.disruption_mask and not method.uses_retain:
            raise ValueError(f"method {self.name} has no retain term, so method.disruption_mask has no gradient to "
                             "agree with; remove it or choose a method with a retain term (gd, ihl, npo, ...)")
        if self.retain_kind != "lm" and (not method.uses_retain or self.retain_kind not in method.retain_kinds):
            why = ("has no retain term" if not method.uses_retain else "has a retain term of its own")
            raise ValueError(f"method {self.name} {why}, so method.retain_kind={self.retain_kind} does not apply; "
                             "remove it")
        return self

    def method_class(self) -> Any:
        """The method's class (:func:`unlearnkit.config.plugins.load_plugin`)."""
        return load_plugin("method", self.name)

    def gradient_point(self) -> dict[str, float | bool]:
        """How the forget gradient is taken, when not plainly at θ (``sam_rho``, ``meta_relearn``,
        ``disruption_mask``): the keys that set, for a results row."""
        return {key: value for key, value in (("sam_rho", self.sam_rho), ("meta_relearn", self.meta_relearn),
                                              ("disruption_mask", self.disruption_mask)) if value}

    def given_options(self) -> dict[str, Any]:
        """The method's own options the config gives (null: the method's default, as resolved configs of runs
        before the methods had their own options wrote them)."""
        return {key: value for key, value in (self.model_extra or {}).items() if value is not None}

    def options(self) -> Any:
        """The method's options, its defaults where the config gives none."""
        return self.method_class().Options(**self.given_options())


class FloraOptions(BaseModel):
    """Settings of the FLoRA initialisation (defaults follow the paper and the authors' code)."""

    model_config = ConfigDict(extra="forbid")

    estimator: Literal["per_batch", "per_sequence"] = "per_batch"
    """Fisher estimator, see :mod:`unlearnkit.adapters.fisher` (per_batch = authors' code)."""
    eps: float = Field(default=1e-5, ge=0.0)
    """Added to the retain Fisher (per token) before dividing: F_rel = F_f / (F_r + eps)."""
    solver: Literal["row", "elementwise"] = "row"
    """``row``: closed form of Eq. 4 (the paper's choice); ``elementwise``: EM for Eq. 3."""
    svd: Literal["auto", "exact", "randomized"] = "auto"
    """``randomized``: torch.svd_lowrank (an order of magnitude faster on large layers; the Eq. 4 objective
    within about 1 %, see benchmarks/README.md); ``auto``: randomized for layers of at least 512 x 512 at
    ranks up to an eighth of that, exact otherwise."""
    fisher_batch_size: int = Field(default=8, ge=1)
    em_iterations: int = Field(default=50, ge=0)
    em_tolerance: float = Field(default=1e-6, ge=0.0)
    fisher_path: str | None = None
    """Directory caching ``forget.safetensors`` / ``retain.safetensors``: loaded (and checked
    against the model) when present, written after computing otherwise."""
    retain_sequences: int | None = Field(default=0, ge=0)
    """Retain sequences the retain Fisher is estimated on, a seeded sample: 0 = as many as the forget set
    (what one unlearning epoch draws; the paper does not say), ``None`` = the whole retain set (a WikiText
    retain set of 1228 blocks of 200 tokens costs 38 forget-set passes)."""


class AdapterConfig(Section):
    name: str = Field("lora", description="none (full fine-tuning) | lora | flora, or your own: module.path:Class "
                                          "or path/to/file.py:Class (docs/extending.md)")
    rank: int = Field(16, description="LoRA rank r")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha; the adapter is scaled by alpha / rank")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    modules: list[str] = Field(default_factory=lambda: ["q", "v", "ffn"],
                               description="module groups (q, k, v, o, ffn) or module names")
    flora: FloraOptions = Field(default_factory=FloraOptions)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        try:
            adapter = load_plugin("adapter", name)
        except UnlearnkitError as error:
            raise ValueError(str(error).rstrip(".")) from None
        if not (hasattr(adapter, "attach") and hasattr(adapter, "paper_lr")):
            raise ValueError(f"{name} is not an adapter; subclass unlearnkit.adapters.Adapter (docs/extending.md)")
        return name

    @model_validator(mode="after")
    def _options_fit(self) -> AdapterConfig:
        problems = self.adapter_class().problems(self)
        if problems:
            raise ValueError(problems[0].rstrip("."))
        return self

    def adapter_class(self) -> Any:
        """The adapter's class (:func:`unlearnkit.config.plugins.load_plugin`)."""
        return load_plugin("adapter", self.name)

    @field_validator("rank")
    @classmethod
    def _positive(cls, rank: int) -> int:
        if rank < 1:
            raise ValueError("adapter.rank must be at least 1")
        return rank


class TrainConfig(Section):
    lr: float | None = Field(None, gt=0, description="default: 5e-5 for full fine-tuning, 2e-4 for (F)LoRA")
    epochs: int = Field(20, ge=1, description="maximum epochs over the forget set")
    batch_size: int = Field(8, ge=1, description="forget sequences per step")
    retain_batch_size: int | None = Field(None, ge=1, description="retain sequences per step; default batch_size")
    grad_accum: int = Field(1, ge=1)
    max_grad_norm: float | None = Field(1.0, description="gradient clipping; null to disable")
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(0, ge=0, description="optimizer updates over which the lr rises linearly to train.lr")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass instead of keeping them: less memory, "
                           "about a third more compute; works with LoRA/FLoRA (the adapters still get gradients)")
    collapse_factor: float | None = Field(
        5.0, gt=1.0, description="stop as collapsed (model restored to the last good epoch) when the LM loss of a "
                                 "fixed sample of retain (else held-out) text exceeds this factor times its value "
                                 "before unlearning, or the forget loss exceeds 100 nats per token; null: off")


class DownstreamConfig(Section):
    """What the model kept (Section 4.1, Table 1): an evaluation suite, scored before and after unlearning."""

    suite: str = Field("paper", description="a named suite (paper | quick), see unlearnkit.config.suites")
    tasks: list[str] | None = Field(None, description="these tasks instead of the suite's: reasoning tasks (ours "
                                                      "or lm-eval's built-in), dialogue sets, pile | wikitext")
    limit: int | None = Field(None, ge=1, description="score the first N items of each task (null: all)")
    batch_size: int = Field(16, ge=1)
    ppl_window: int | None = Field(None, ge=2, description="perplexity window; default the model's context, "
                                                           "at most 1024 tokens")
    ppl_stride: int | None = Field(None, ge=1, description="perplexity stride; default half the window")

    @field_validator("suite")
    @classmethod
    def _known_suite(cls, name: str) -> str:
        if name not in SUITES:
            raise ValueError(str(unknown_name("evaluation suite", name, SUITES)))
        return name


class TofuEvalConfig(Section):
    """TOFU's evaluation (Maini et al., 2024, as its code computes it): forget-set truth ratio, probability and ROUGE,
    model utility on retain / real authors / world facts, and forget quality against a retain model."""

    split: str = Field("forget10", description="the forget split: forget01 | forget05 | forget10")
    template: str = Field("phi", description="how a question and answer become text: phi | llama2 | chat | text "
                                             "with {question} and {answer}")
    items: Literal["first300", "all"] = Field(
        "first300", description="first300: the first 300 questions of each set, as the original code; all: every "
                                "question, as open-unlearning")
    retain_model: str | None = Field(None, description="the model fine-tuned without the forget split's authors, "
                                                       "for forget quality (null: not measured)")
    generate: bool = Field(True, description="greedy answers and their ROUGE-L recall (the slow part)")
    generation_length: int = Field(200, ge=2, description="prompt and greedy answer together, in tokens (TOFU's "
                                                          "generation.max_length)")
    every_epoch: bool = Field(False, description="TOFU's numbers after every epoch too (the curve of model utility "
                                                 "against forget quality); before and after always")
    limit: int | None = Field(None, ge=1, description="score the first N questions of each set (quick looks)")
    batch_size: int = Field(64, ge=1, description="questions answered at once (greedy answers; the losses go one "
                                                 "question at a time, its prompt shared by its answers)")

    @field_validator("split")
    @classmethod
    def _forget_split(cls, split: str) -> str:
        if split not in ("forget01", "forget05", "forget10"):
            raise ValueError(str(unknown_name("TOFU forget split", split, ("forget01", "forget05", "forget10"))))
        return split

    @field_validator("template")
    @classmethod
    def _template(cls, template: str) -> str:
        check_qa_template(template)  # the same check as a tofu source's
        return template


class EvalConfig(Section):
    el_n: int = Field(10, ge=1, description="n of the n-gram extraction likelihood EL_n")
    ma_threshold: float | None = Field(None, description="stop when forget MA <= this; default: validation mean")
    el_threshold: float | None = Field(None, description="stop when forget EL_n <= this; default: validation mean")
    early_stop: bool = True
    rule: Literal["paper", "paper+mia"] = Field(
        "paper", description="when forgetting is met. paper: forget MA and EL_n at or below the held-out means "
                             "(Appendix B); paper+mia: that, and the forget rows indistinguishable from the "
                             "held-out rows by membership inference (docs/robust.md)")
    mia_margin: float = Field(0.15, gt=0, le=0.5, description="paper+mia: the bootstrap interval of each membership "
                                                              "AUC (LOSS, Min-K%) must lie within 0.5 ± this")
    mia_confidence: float = Field(0.8, gt=0, lt=1, description="paper+mia: the coverage of that interval")
    batch_size: int = Field(32, ge=1)
    el_method: Literal["fast", "reference"] = "fast"
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for the threshold and membership-AUC "
                                                   "intervals")
    audit: bool = Field(True, description="extraction attack and membership inference before and after")
    retain_sequences: int = Field(0, ge=0, description="retain sequences also scored before and after (0: none)")
    per_epoch_el: Literal["decide", "full"] = Field(
        "decide", description="how EL_n is scored after each epoch. decide: only what the stopping rule needs, "
                              "exactly: no EL while forget MA is above its threshold, and EL sequence by sequence, "
                              "highest MA first, stopping once the running sum proves the mean is above its "
                              "threshold (every term is >= 0); the epoch that meets the criterion, and the "
                              "before/after snapshots, get the full value. full: every epoch's full EL_n (a "
                              "complete per-epoch curve; EL of half-forgotten text is the dearest score of a run)")
    after_el: Literal["all", "forget"] = Field(
        "all", description="which sets get EL_n after unlearning. all: forget, held-out and retain sets; forget: "
                           "the forget set only, the others MA only (EL_n of text the unlearned model no longer "
                           "predicts decodes every prefix afresh: on a real model each set costs as much as the "
                           "forget set's, and the held-out EL_n after unlearning is no column of the paper)")
    cache_scores: bool = Field(
        True, description="keep MA and EL_n measured before unlearning (held-out thresholds, forget set) and by "
                          "`attack` on every attacked copy in $UNLEARNKIT_CACHE/scores by model and data "
                          "fingerprint, and reuse them in later runs and in an interrupted attack run again")
    downstream: DownstreamConfig | None = Field(
        None, description="what the model kept, before and after: reasoning, dialogue, perplexity (null: off)")
    tofu: TofuEvalConfig | None = Field(None, description="TOFU's evaluation before and after (null: off)")
    metrics: list[str] = Field(
        default_factory=list, description="metrics of your own in every snapshot (before, after, audit): "
                                          "module.path:Class or path/to/file.py:Class (docs/extending.md)")

    @field_validator("metrics")
    @classmethod
    def _metrics_load(cls, references: list[str]) -> list[str]:
        for reference in references:
            try:
                metric = load_plugin("metric", reference)
            except UnlearnkitError as error:
                raise ValueError(str(error).rstrip(".")) from None
            if not (isinstance(getattr(metric, "key", None), str) and metric.key and hasattr(metric, "measure")):
                raise ValueError(f"{reference} is not a metric; subclass unlearnkit.evaluation.Metric and give it a "
                                 "key (docs/extending.md)")
        return references


class LogConfig(Section):
    """Experiment tracking through accelerate's trackers: the config as hyper-parameters, each update's losses and
    learning rate, each epoch's record (MA, EL_n, the rule's verdicts), the final scores."""

    to: list[Literal["tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive"]] = Field(
        default_factory=list, description="trackers to report to (none by default): tensorboard, wandb, mlflow, "
                                          "comet_ml, aim, clearml, dvclive")
    project: str = Field("unlearnkit", description="the project (experiment) name at the tracker")
    dir: str | None = Field(None, description="where file-based trackers write, a folder per run (default: logs/ "
                                              "beside output.dir)")


class OutputConfig(Section):
    dir: str = "runs/unlearn"
    overwrite: bool = False
    save_model: bool = True
    checkpoint: bool = Field(
        True, description="`unlearnkit run` saves a checkpoint after every epoch (beside output.dir, removed when the "
                          "outputs are written) so that an interrupted run can be resumed exactly")
    fail_if_not_forgotten: bool = Field(
        True, description="`unlearnkit run` exits 4 when the forgetting criterion is not met within train.epochs "
                          "(false: 0, e.g. for sweeps that record failures)")


class RunConfig(Section):
    seed: int = 42
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @model_validator(mode="after")
    def _resolve(self) -> RunConfig:
        if self.train.lr is None:
            self.train.lr = self.adapter.adapter_class().paper_lr
        if self.train.retain_batch_size is None:
            self.train.retain_batch_size = self.train.batch_size
        problems = []  # all of them at once: one round of fixes should suffice
        if self.trains_on_retain() and self.data.retain is None:
            why = self.adapter.adapter_class().uses_retain or f"method {self.method.name}"
            problems.append(f"{why} needs a retain set; set data.retain (e.g. source: wikitext)")
        if self.data.validation is None and self.needs_validation():
            problems.append("without data.validation, set both eval.ma_threshold and eval.el_threshold")
        if self.data.validation is None and self.eval.rule == "paper+mia":
            problems.append("eval.rule paper+mia compares the forget rows with held-out rows; set data.validation "
                            "(or use eval.rule: paper)")
        if self.eval.el_n + 1 > self.data.seq_len:
            problems.append(f"EL{self.eval.el_n} needs sequences of at least {self.eval.el_n + 1} tokens but "
                            f"data.seq_len is {self.data.seq_len}; lower eval.el_n or raise data.seq_len")
        if self.data.requests and not self.output.save_model:
            problems.append("data.requests continue each request from the model the one before wrote; set "
                            "output.save_model: true")
        if problems:
            raise ValueError(". ".join([problems[0], *(p[0].upper() + p[1:] for p in problems[1:])]))
        return self

    def trains_on_retain(self) -> bool:
        """The retain set feeds training: the method's retain loss, or FLoRA's Fisher ratio."""
        return bool(self.method.method_class().uses_retain) or bool(self.adapter.adapter_class().uses_retain)

    def needs_retain(self) -> bool:
        """The run loads the retain set: for training, or to score kept text before and after."""
        return self.trains_on_retain() or self.eval.retain_sequences > 0

    def needs_validation(self) -> bool:
        """The held-out set is needed to measure a threshold the config does not give."""
        return self.eval.ma_threshold is None or self.eval.el_threshold is None

    def to_yaml(self) -> str:
        resolved = self.model_dump(mode="json")
        # A source lists only the fields it uses: the others do not apply to it and are refused on reload.
        for role in ("forget", "retain", "validation"):
            spec = getattr(self.data, role)
            resolved["data"][role] = spec.model_dump(mode="json", exclude_unset=True) if spec else None
        resolved["data"]["requests"] = [spec.model_dump(mode="json", exclude_unset=True) for spec in self.data.requests]
        return yaml.safe_dump(resolved, sort_keys=False)
