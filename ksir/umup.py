"""The own family's Llama under u-muP (Blake et al. 2024, "u-muP: The Unit-Scaled Maximal Update
Parametrization"), built from Graphcore's `unit-scaling` library.

Every op is unit-scaled (`unit_scaling.functional`): weights start at unit variance, each linear divides
its output by sqrt(fan_in) and its gradients by their own fan, attention uses softmax(mult q.k / d_head),
residual branches are weighted by the library's depth rule (`transformer_residual_scaling_rule`), the
readout divides by fan_in, and `unit_scaling.optim.AdamW` scales each parameter's learning rate by
fan_in^-1/2 (and depth^-1/2 for the blocks). Norms have no trainable gain (as in the paper).

The module mirrors `transformers.LlamaForCausalLM` (same parameter names, same RoPE) so that training,
resuming and counting parameters need nothing special, and `to_hf` folds every constant multiplier into
the weights: the result is a plain Hugging Face Llama that computes the same function, so PTQ, packing,
evaluation and every analysis treat a u-muP model like any other checkpoint.

Why not `unit_scaling.transforms.unit_scale` on the Hugging Face model: with the pinned torch it fails to
trace Llama's attention (`scaled_dot_product_attention(scale=...)`), and it applies unit scaling without
u-muP's learning-rate and residual rules.
"""

from __future__ import annotations

from typing import Any

import torch
import unit_scaling as uu
import unit_scaling.functional as U
from torch import nn
from transformers.modeling_outputs import CausalLMOutput
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from ksir import precision


class UnitLinear(uu.Linear):
    """uu.Linear whose matmul can run at a low precision (`ksir.precision`), like every block linear."""

    fmt = precision.FORMATS["fp32"]
    scaling = "tensor"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return precision.linear(x, self.weight, self.bias, self.fmt, self.scaling,
                                op=lambda a, w, b: U.linear(a, w, b, self.constraint))


class Attention(nn.Module):
    def __init__(self, d: int, heads: int, kv_heads: int, mult: float):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.mult = heads, kv_heads, d // heads, mult
        self.q_proj = UnitLinear(d, heads * self.head_dim, bias=False)
        self.k_proj = UnitLinear(d, kv_heads * self.head_dim, bias=False)
        self.v_proj = UnitLinear(d, kv_heads * self.head_dim, bias=False)
        self.o_proj = UnitLinear(heads * self.head_dim, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if self.kv_heads != self.heads:
            k, v = (z.repeat_interleave(self.heads // self.kv_heads, dim=1) for z in (k, v))
        out = U.scaled_dot_product_attention(q, k, v, is_causal=True, mult=self.mult)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))

    def output_scale(self, seq_len: int) -> float:
        """The forward multiplier `U.scaled_dot_product_attention` applies to its output (folded by `to_hf`)."""
        probe = torch.zeros(1, 1, seq_len, self.head_dim, requires_grad=False)
        ones = torch.ones_like(probe)
        return float(U.scaled_dot_product_attention(probe, probe, ones, is_causal=True, mult=self.mult)[0, 0, 0, 0])


class MLP(nn.Module):
    def __init__(self, d: int, ff: int):
        super().__init__()
        self.gate_proj = UnitLinear(d, ff, bias=False)
        self.up_proj = UnitLinear(d, ff, bias=False)
        self.down_proj = UnitLinear(ff, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(U.silu_glu(self.up_proj(x), self.gate_proj(x)))

    @staticmethod
    def output_scale() -> float:
        """The forward multiplier of `U.silu_glu` (mult 1)."""
        x = torch.ones(1)
        return float(U.silu_glu(x, torch.full((1,), 50.0)) / (x * torch.nn.functional.silu(torch.full((1,), 50.0))))


class Block(nn.Module):
    def __init__(self, cfg: Any, tau_attn: float, tau_mlp: float, attn_mult: float):
        super().__init__()
        d = cfg.hidden_size
        self.self_attn = Attention(d, cfg.num_attention_heads, cfg.num_key_value_heads, attn_mult)
        self.mlp = MLP(d, cfg.intermediate_size)
        self.tau_attn, self.tau_mlp, self.eps = tau_attn, tau_mlp, cfg.rms_norm_eps

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        d = (x.shape[-1],)
        h, skip = U.residual_split(x, tau=self.tau_attn)
        x = U.residual_add(self.self_attn(U.rms_norm(h, d, eps=self.eps), cos, sin), skip, tau=self.tau_attn)
        h, skip = U.residual_split(x, tau=self.tau_mlp)
        return U.residual_add(self.mlp(U.rms_norm(h, d, eps=self.eps)), skip, tau=self.tau_mlp)


class Trunk(nn.Module):
    def __init__(self, cfg: Any, residual_mult: float, residual_attn_ratio: float, attn_mult: float):
        super().__init__()
        n = cfg.num_hidden_layers
        rule = uu.transformer_residual_scaling_rule(residual_mult, residual_attn_ratio)
        self.embed_tokens = uu.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = uu.DepthModuleList([Block(cfg, rule(2 * i, 2 * n), rule(2 * i + 1, 2 * n), attn_mult)
                                          for i in range(n)])
        self.rotary_emb = LlamaRotaryEmbedding(cfg)


class UmupLlama(nn.Module):
    """A Llama under u-muP; `forward(input_ids, labels)` returns what a Hugging Face causal LM returns."""

    def __init__(self, cfg: Any, residual_mult: float = 1.0, residual_attn_ratio: float = 1.0, attn_mult: float = 1.0):
        super().__init__()
        self.config = cfg
        self.hparams = {"residual_mult": residual_mult, "residual_attn_ratio": residual_attn_ratio, "attn_mult": attn_mult}
        self.model = Trunk(cfg, residual_mult, residual_attn_ratio, attn_mult)
        self.lm_head = uu.LinearReadout(cfg.hidden_size, cfg.vocab_size, bias=False)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **_: Any) -> CausalLMOutput:
        x = U.embedding(input_ids, self.model.embed_tokens.weight)
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        cos, sin = self.model.rotary_emb(x, pos)
        for block in self.model.layers:
            x = block(x, cos, sin)
        logits = self.lm_head(U.rms_norm(x, (x.shape[-1],), eps=self.config.rms_norm_eps))
        loss = None
        if labels is not None:
            loss = U.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
        return CausalLMOutput(loss=loss, logits=logits)

    @torch.no_grad()
    def to_hf(self, seq_len: int) -> nn.Module:
        """A `LlamaForCausalLM` computing the same function, every u-muP multiplier folded into its weights.

        Residual stream: u-muP's x_{l+1} = x_l / s_l + tau_l / s_l f_l(norm(x_l)) with s_l = sqrt(1 + tau_l^2);
        with c_l = prod_{j<l} 1/s_j, y_l = x_l / c_l obeys Llama's y_{l+1} = y_l + (tau_l / c_l) f_l(norm(y_l))
        (RMSNorm is scale-invariant up to its epsilon), so tau_l / c_l goes into the branch's output projection.
        Attention output and SwiGLU scales depend on the sequence length only through attention's empirical
        scale model, which is why `seq_len` (the training length) is needed."""
        from transformers import LlamaForCausalLM

        hf = LlamaForCausalLM(self.config).eval()
        sd: dict[str, torch.Tensor] = {"model.embed_tokens.weight": self.model.embed_tokens.weight.detach().clone()}
        c = 1.0
        attn_out = self.model.layers[0].self_attn.output_scale(seq_len) if len(self.model.layers) else 1.0
        glu_out = MLP.output_scale()
        for i, block in enumerate(self.model.layers):
            a, m, p = block.self_attn, block.mlp, f"model.layers.{i}."
            lin = {n: mod.weight.detach() / mod.weight.shape[1] ** 0.5 for n, mod in (
                ("self_attn.q_proj", a.q_proj), ("self_attn.k_proj", a.k_proj), ("self_attn.v_proj", a.v_proj),
                ("self_attn.o_proj", a.o_proj), ("mlp.gate_proj", m.gate_proj), ("mlp.up_proj", m.up_proj),
                ("mlp.down_proj", m.down_proj))}
            lin["self_attn.q_proj"] = lin["self_attn.q_proj"] * (a.mult / a.head_dim) / a.head_dim ** -0.5
            lin["self_attn.o_proj"] = lin["self_attn.o_proj"] * attn_out * block.tau_attn / c
            c /= (1 + block.tau_attn ** 2) ** 0.5
            lin["mlp.down_proj"] = lin["mlp.down_proj"] * glu_out * block.tau_mlp / c
            c /= (1 + block.tau_mlp ** 2) ** 0.5
            sd.update({p + n + ".weight": w.clone() for n, w in lin.items()})
        sd["lm_head.weight"] = self.lm_head.weight.detach() / self.lm_head.weight.shape[1]
        missing, unexpected = hf.load_state_dict(sd, strict=False)
        left = [k for k in missing if not k.endswith("layernorm.weight") and k != "model.norm.weight"]
        if left or unexpected:
            raise RuntimeError(f"u-muP export: missing {left}, unexpected {unexpected}")
        return hf
