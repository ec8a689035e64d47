"""Model configurations as plain data.

Two architectures, two dataclasses, field names as Hugging Face writes them in `config.json` so a
checkpoint folder round-trips without a renaming table:

* `ModelConfig`        -- DeepSeek-Coder v1, a Llama decoder (v1 paper §3.3; the released v1 config.json).
* `DeepseekV2Config`   -- DeepSeek-Coder-V2: MLA attention + DeepSeekMoE + YaRN (V2 paper; the released V2 config.json).

Named presets live in `presets.py`. `config_from_hf(dict)` / `cfg.to_hf()` convert to and from `config.json`.
Unknown fields are an error that names them (a typo in a preset override must never be silently dropped);
fields that Hugging Face writes but that change nothing here are listed in `_HF_IGNORED`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

# Fields HF puts in config.json that carry no architecture information for us.
_HF_IGNORED = {
    "_name_or_path", "architectures", "auto_map", "torch_dtype", "dtype", "transformers_version", "use_cache",
    "pretraining_tp", "attention_dropout", "hidden_dropout", "mlp_bias", "attention_bias", "hidden_act",
    "model_type", "rope_scaling", "rope_parameters", "output_attentions", "output_hidden_states", "return_dict",
    "quantization_config", "tie_word_embeddings", "id2label", "label2id", "problem_type", "is_decoder",
    "pad_token_id", "bos_token_id", "eos_token_id", "ep_size", "num_nextn_predict_layers", "moe_layer_freq",
    "chunk_size_feed_forward", "tokenizer_class", "initializer_range", "head_dim", "layer_types",
    "_attn_implementation_autoset", "sliding_window", "use_sliding_window", "max_window_layers",
    "mlp_layer_types", "first_k_dense_replace", "scoring_func", "topk_method", "seq_aux", "aux_loss_alpha",
    "norm_topk_prob", "routed_scaling_factor", "n_group", "topk_group", "num_experts_per_tok",
    "n_shared_experts", "n_routed_experts", "moe_intermediate_size", "kv_lora_rank", "q_lora_rank",
    "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "rope_interleave", "experts_implementation",
}


def _check_fields(cls, kwargs: dict[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")


def _type_ok(value: Any, hint: Any) -> bool:
    """JSON value against a field annotation: bool is not an int, an int is a float, containers checked inside."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_type_ok(v, typing.get_args(hint)[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _check_types(cls, kw: dict[str, Any]) -> None:
    """ValueError naming the first config.json field whose value has the wrong JSON type, and the type expected."""
    hints = typing.get_type_hints(cls)
    for name, value in kw.items():
        if not _type_ok(value, hints[name]):
            want = getattr(hints[name], "__name__", None) or str(hints[name]).replace("typing.", "")
            raise ValueError(f"field {name!r} must be {want}, got {type(value).__name__} {value!r}")


def _rope_block(d: dict[str, Any]) -> dict[str, Any]:
    """The RoPE settings of an HF config, whichever spelling wrote it.

    transformers <5 writes `rope_theta` + `rope_scaling` {"type"|"rope_type", "factor", ...};
    transformers 5 writes `rope_parameters` {"rope_type", "rope_theta", "factor", ...}."""
    block = dict(d.get("rope_parameters") or {})
    block.update(d.get("rope_scaling") or {})
    if "type" in block and "rope_type" not in block:
        block["rope_type"] = block.pop("type")
    block.setdefault("rope_theta", d.get("rope_theta", block.get("rope_theta")))
    block.setdefault("rope_type", "default")
    return block


@dataclass
class ModelConfig:
    """DeepSeek-Coder v1 / Llama. `head_dim` defaults to hidden_size // num_attention_heads."""
    vocab_size: int = 32256
    hidden_size: int = 2048
    intermediate_size: int = 5504
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int = 16          # == heads: MHA; 1: MQA; in between: GQA
    head_dim: int = 0                      # 0 -> hidden_size // num_attention_heads
    max_position_embeddings: int = 16384
    rope_theta: float = 100000.0
    rope_scaling_factor: float = 1.0       # linear position interpolation (v1 long-context: 4.0)
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 32013
    eos_token_id: int | list[int] | None = 32014
    pad_token_id: int | None = None
    model_type: str = "llama"

    def __post_init__(self):
        if self.head_dim == 0:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                                 f"num_attention_heads {self.num_attention_heads}")
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} must be a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")
        if self.rope_scaling_factor < 1.0:
            raise ValueError(f"rope_scaling_factor {self.rope_scaling_factor} must be >= 1")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def create(cls, **kwargs) -> "ModelConfig":
        _check_fields(cls, kwargs)
        return cls(**kwargs)

    def replace(self, **kwargs) -> "ModelConfig":
        _check_fields(type(self), kwargs)
        return dataclasses.replace(self, **kwargs)

    def num_params(self) -> int:
        """Exact parameter count of `models.llama.Transformer` for this config."""
        h, hd = self.hidden_size, self.head_dim
        attn = h * hd * (2 * self.num_attention_heads + 2 * self.num_key_value_heads)
        mlp = 3 * h * self.intermediate_size
        per_layer = attn + mlp + 2 * h
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return emb + self.num_hidden_layers * per_layer + h

    # --- Hugging Face config.json ---------------------------------------------------------------
    def to_hf(self) -> dict[str, Any]:
        rope = {"rope_type": "linear", "factor": self.rope_scaling_factor} if self.rope_scaling_factor != 1.0 else None
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads, "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim, "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            # both spellings: transformers 4.x reads rope_scaling, 5.x reads rope_parameters
            "rope_scaling": ({"type": "linear", **rope} if rope else None),
            "rope_parameters": ({**rope, "rope_theta": self.rope_theta} if rope
                                else {"rope_type": "default", "rope_theta": self.rope_theta}),
            "rms_norm_eps": self.rms_norm_eps, "initializer_range": self.initializer_range,
            "tie_word_embeddings": self.tie_word_embeddings, "hidden_act": "silu",
            "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id, "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32", "use_cache": True,
        }

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> "ModelConfig":
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {d['hidden_act']!r}: DeepSeek-Coder uses silu (SwiGLU)")
        if d.get("attention_bias") or d.get("mlp_bias"):
            raise ValueError("attention_bias/mlp_bias=true is not a DeepSeek-Coder v1 layout")
        rope = _rope_block(d)
        if rope["rope_type"] not in ("default", "linear"):
            raise ValueError(f"unsupported rope scaling {rope['rope_type']!r} for a Llama checkpoint "
                             "(DeepSeek-Coder v1 uses linear)")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - _HF_IGNORED)
        if unknown:
            raise ValueError(f"config.json: unknown field(s) {', '.join(unknown)}")
        kw = {k: d[k] for k in known if k in d and d[k] is not None and k != "model_type"}
        _check_types(cls, kw)
        kw["rope_theta"] = float(rope["rope_theta"] or 10000.0)
        kw["rope_scaling_factor"] = float(rope.get("factor", 1.0)) if rope["rope_type"] == "linear" else 1.0
        for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
            kw[k] = d.get(k)
        return cls(**kw)


@dataclass
class DeepseekV2Config:
    """DeepSeek-Coder-V2 (MLA + DeepSeekMoE + YaRN). Defaults: V2-Lite (the released V2 config.json).

    Bad values raise `UserError` naming the field. `rope_scaling` is the released config.json block
    ({"type": "yarn", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale",
    "mscale_all_dim"}) or None for plain RoPE."""
    vocab_size: int = 102400
    hidden_size: int = 2048
    intermediate_size: int = 10944           # dense FFN (layers < first_k_dense_replace)
    moe_intermediate_size: int = 1408        # each routed expert
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    num_key_value_heads: int = 16            # MLA: always == num_attention_heads (kept for config.json parity)
    # MLA
    q_lora_rank: int | None = None           # None: plain q_proj (Lite); else q_a_proj -> norm -> q_b_proj
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    # MoE
    n_routed_experts: int = 64
    n_shared_experts: int = 2
    num_experts_per_tok: int = 6
    moe_layer_freq: int = 1
    first_k_dense_replace: int = 1
    topk_method: str = "greedy"              # greedy | group_limited_greedy ("gready" accepted)
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = False
    scoring_func: str = "softmax"
    aux_loss_alpha: float = 0.001
    seq_aux: bool = True
    # RoPE / YaRN
    max_position_embeddings: int = 163840
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = field(default_factory=lambda: {
        "type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
        "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 0.707})
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 100000
    eos_token_id: int | list[int] | None = 100001
    pad_token_id: int | None = None
    model_type: str = "deepseek_v2"

    def __post_init__(self):
        from ..errors import UserError
        if self.topk_method == "gready":      # spelling used by early remote code and configs
            self.topk_method = "greedy"
        self.n_group, self.topk_group = self.n_group or 1, self.topk_group or 1   # transformers writes null
        self.q_lora_rank = self.q_lora_rank or None
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "moe_layer_freq"):
            if getattr(self, name) <= 0:
                raise UserError(f"DeepseekV2Config: {name} must be positive, got {getattr(self, name)}")
        if self.topk_method not in ("greedy", "group_limited_greedy"):
            raise UserError(f"DeepseekV2Config: unknown topk_method {self.topk_method!r} "
                            "(expected 'greedy' or 'group_limited_greedy')")
        if self.scoring_func != "softmax":
            raise UserError(f"DeepseekV2Config: unsupported scoring_func {self.scoring_func!r} (V2 uses softmax)")
        if self.num_key_value_heads != self.num_attention_heads:
            raise UserError(f"DeepseekV2Config: num_key_value_heads {self.num_key_value_heads} must equal "
                            f"num_attention_heads {self.num_attention_heads} (MLA has one latent shared by all heads)")
        if self.qk_rope_head_dim % 2:
            raise UserError(f"DeepseekV2Config: qk_rope_head_dim {self.qk_rope_head_dim} must be even for RoPE")
        self._check_moe(UserError)
        self._check_rope(UserError)

    def _check_moe(self, UserError) -> None:
        if self.n_routed_experts <= 0:
            return
        if self.n_routed_experts % self.n_group:
            raise UserError(f"DeepseekV2Config: n_routed_experts {self.n_routed_experts} is not divisible by "
                            f"n_group {self.n_group}")
        if not 1 <= self.topk_group <= self.n_group:
            raise UserError(f"DeepseekV2Config: topk_group {self.topk_group} must be in [1, n_group={self.n_group}]")
        reachable = self.n_routed_experts if self.topk_method == "greedy" else \
            self.topk_group * self.n_routed_experts // self.n_group
        if not 1 <= self.num_experts_per_tok <= reachable:
            raise UserError(f"DeepseekV2Config: num_experts_per_tok {self.num_experts_per_tok} must be in "
                            f"[1, {reachable}] (experts reachable with topk_method {self.topk_method!r})")

    def _check_rope(self, UserError) -> None:
        if self.rope_scaling is None:
            return
        rs = dict(self.rope_scaling)
        kind = rs.pop("type", None) or rs.pop("rope_type", None) or "yarn"
        rs.pop("rope_type", None)
        if kind == "default":
            self.rope_scaling = None
            return
        if kind != "yarn":
            raise UserError(f"DeepseekV2Config: unsupported rope_scaling type {kind!r} (DeepSeek-V2 uses yarn)")
        for key in ("factor", "original_max_position_embeddings"):
            if not rs.get(key):
                raise UserError(f"DeepseekV2Config: rope_scaling (yarn) needs {key!r}")
        rs.setdefault("beta_fast", 32.0)     # YaRN's defaults, as the original code assumes when absent
        rs.setdefault("beta_slow", 1.0)
        self.rope_scaling = {"type": "yarn", **rs}

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def is_moe_layer(self, i: int) -> bool:
        """MoE FFN at layer i (the released remote code's rule; transformers 5 ignores moe_layer_freq)."""
        return self.n_routed_experts > 0 and i >= self.first_k_dense_replace and i % self.moe_layer_freq == 0

    @classmethod
    def create(cls, **kwargs) -> "DeepseekV2Config":
        _check_fields(cls, kwargs)
        return cls(**kwargs)

    def replace(self, **kwargs) -> "DeepseekV2Config":
        _check_fields(type(self), kwargs)
        return dataclasses.replace(self, **kwargs)

    def num_params(self, active: bool = False) -> int:
        """Total parameters, or those used per token (`active=True`: top-k routed + shared experts, and the
        input embedding left out since a lookup does no compute -- how DeepSeek counts 2.4B / 21B active)."""
        h, n = self.hidden_size, self.num_attention_heads
        if self.q_lora_rank:
            q = h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * n * self.qk_head_dim
        else:
            q = h * n * self.qk_head_dim
        kv = (h * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank
              + self.kv_lora_rank * n * (self.qk_nope_head_dim + self.v_head_dim))
        attn = q + kv + n * self.v_head_dim * h
        total = 0
        for i in range(self.num_hidden_layers):
            if self.is_moe_layer(i):
                experts = self.num_experts_per_tok if active else self.n_routed_experts
                ffn = (experts + self.n_shared_experts) * 3 * h * self.moe_intermediate_size + self.n_routed_experts * h
            else:
                ffn = 3 * h * self.intermediate_size
            total += attn + ffn + 2 * h
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings or active else 2)
        return total + emb + h

    def to_hf(self) -> dict[str, Any]:
        """config.json in the released layout (`rope_theta` + `rope_scaling`), plus transformers 5's
        `rope_parameters` (it reads either; both say the same)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        rope = dict(self.rope_scaling) if self.rope_scaling else None
        d.update({"architectures": ["DeepseekV2ForCausalLM"], "hidden_act": "silu", "attention_bias": False,
                  "attention_dropout": 0.0, "torch_dtype": "float32", "use_cache": True, "rope_scaling": rope,
                  "rope_parameters": ({**{k: v for k, v in rope.items() if k != "type"}, "rope_type": "yarn",
                                       "rope_theta": self.rope_theta} if rope
                                      else {"rope_type": "default", "rope_theta": self.rope_theta})})
        return d

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> "DeepseekV2Config":
        """Read a released (remote-code) or transformers-5-written config.json."""
        from ..errors import UserError
        if d.get("hidden_act", "silu") != "silu":
            raise UserError(f"config.json: unsupported hidden_act {d['hidden_act']!r} (DeepSeek-V2 uses silu)")
        if d.get("attention_bias"):
            raise UserError("config.json: attention_bias=true is not a DeepSeek-V2 layout")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - _HF_IGNORED - _HF_IGNORED_V2)
        if unknown:
            raise UserError(f"config.json: unknown field(s) {', '.join(unknown)}")
        kw = {k: d[k] for k in known if k in d and k not in ("model_type", "rope_scaling")}
        kw = {k: v for k, v in kw.items() if v is not None or k not in ("n_group", "topk_group")}  # null: 1
        try:
            _check_types(cls, kw)
        except ValueError as e:
            raise UserError(f"config.json: {e}") from None
        rope = _rope_block(d)
        kw["rope_theta"] = float(rope.get("rope_theta") or 10000.0)
        if rope["rope_type"] == "yarn":
            extra = {k: v for k, v in rope.items() if k not in ("rope_theta", "rope_type", "type")}
            kw["rope_scaling"] = {"type": "yarn", **extra}
        elif rope["rope_type"] == "default":
            kw["rope_scaling"] = None
        else:
            raise UserError(f"config.json: unsupported rope scaling {rope['rope_type']!r} (DeepSeek-V2 uses yarn)")
        return cls(**kw)


# Keys transformers 5 adds to a DeepSeek-V2 config.json that carry nothing for us (qk_head_dim is derived).
_HF_IGNORED_V2 = {"qk_head_dim", "output_router_logits", "router_aux_loss_coef"}


def config_from_hf(d: dict[str, Any]) -> ModelConfig | DeepseekV2Config:
    """Pick the config class from `model_type` (llama -> v1, deepseek_v2 -> V2)."""
    mt = d.get("model_type")
    if mt == "llama":
        return ModelConfig.from_hf(d)
    if mt == "deepseek_v2":
        return DeepseekV2Config.from_hf(d)
    raise ValueError(f"config.json: unsupported model_type {mt!r} (expected 'llama' or 'deepseek_v2')")
