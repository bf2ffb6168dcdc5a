"""Atlas (Behrouz et al., arXiv 2505.23735): a memory optimised at test time with the Omega rule.

Per head, a memory M (linear ``M(u) = W u``, or a 2-layer residual MLP ``M(u) = W_r u + W_2 silu(W_1 u)``) is
trained while the sequence is read. At token t, with u_i = phi(k_i) / ||phi(k_i)|| the unit-normalised
polynomial features of the unit key:

    loss_t(M) = 1/c sum_{i=t-c+1..t} gamma_i 1/2 ||M(u_i) - v_i||^2  (Omega rule; c = 1: delta rule)
    S_t = theta_t S_{t-1} + (1 - theta_t) grad loss_t(M_anchor)       (momentum; S_t = grad if disabled)
    M_t = alpha_t M_{t-1} - eta_t NS5(S_t)                            (NS5 = Newton-Schulz, optional)
    y_t = M_t(phi(q_t) / ||phi(q_t)||)

alpha (decay), eta (step), theta (momentum) and gamma (Omega weights) are input-dependent gates in (0, 1).
phi(k) = [a_1 k, a_2 k⊗k, ..., a_p k^{⊗p}] (distinct monomials only) with learnable a_i initialised to 1/i!.
Constant factors (1/2, 1/c, 1 - theta: the momentum is an average) only rescale eta; they are chosen so the
effective step on a key stays <= eta <= max_lr whatever the gates learn: with unbounded heavy-ball momentum
(step eta / (1 - theta)) the inner loop diverged in MQAR training at width 128.

Chunked parallel training: the sequence is cut into chunks of ``chunk_size`` tokens; all gradients inside a
chunk are taken at the chunk's starting memory M_anchor, so they are computed at once, and the linear
recurrences for S and M are evaluated with (C x C) decay matrices. Chunk size 1 is the exact token-by-token
recurrence (M_anchor = M_{t-1}). The chunk grid is global: the state remembers the position inside the
current chunk and the anchor memory, so feeding a sequence in pieces of ANY length with the carried state
gives the same result as one pass.

State keys: ``mem.<p>`` current memory, ``anchor.<p>`` memory at the current chunk's start, ``mom.<p>``
momentum (all (B, H, out, in)), ``buf_u``/``buf_v``/``buf_g`` the last c-1 tokens' features, values and
gamma, ``pos`` the position inside the chunk, ``conv`` the short-convolution cache.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from memo.core.common import ShortConv, State, decay_matrix, l2_normalize, merge_heads, split_heads

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz5(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximate orthogonalisation UV^T of G = USV^T (Muon's quintic iteration) on (..., m, n)."""
    a, b, c = NS_COEFFS
    transpose = g.shape[-2] > g.shape[-1]
    x = g.mT if transpose else g  # (..., small, large)
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        gram = x @ x.mT  # (..., small, small)
        x = a * x + (b * gram + c * gram @ gram) @ x  # (..., small, large)
    return x.mT if transpose else x


@dataclass
class AtlasConfig:
    d_model: int
    n_heads: int = 4
    memory: Literal["linear", "mlp"] = "linear"
    mlp_expansion: int = 2  # hidden width of the MLP memory, in units of the head dim
    poly_degree: int = 2  # p; 1 = plain (unit) keys
    omega_window: int = 2  # c; 1 = delta rule
    chunk_size: int = 16
    momentum: bool = True
    newton_schulz: bool = False
    ns_steps: int = 5
    conv_kernel: int = 4  # causal short convolution on q, k, v; 0 disables it
    max_lr: float = 1.0  # eta_t = max_lr * sigmoid(.)
    init_decay_bias: float = 6.0  # alpha_t = sigmoid(. + bias): starts near 1 (little forgetting)
    init_lr_bias: float = 0.0
    init_momentum_bias: float = 0.0
    init_gamma_bias: float = 2.0
    fast_linear: bool = True  # closed-form chunk for linear memory without Newton-Schulz (same result, less memory)


class AtlasMemory(nn.Module):
    def __init__(self, config: AtlasConfig) -> None:
        super().__init__()
        if config.d_model % config.n_heads:
            raise ValueError(f"d_model={config.d_model} is not divisible by n_heads={config.n_heads}")
        for name in ("poly_degree", "omega_window", "chunk_size"):
            if getattr(config, name) < 1:
                raise ValueError(f"AtlasConfig.{name} must be >= 1, got {getattr(config, name)}")
        if config.memory not in ("linear", "mlp"):
            raise ValueError(f"AtlasConfig.memory must be 'linear' or 'mlp', got {config.memory!r}")
        self.config = config
        d, h = config.d_model, config.n_heads
        dh = d // h
        self.head_dim = dh
        # distinct monomials of degree i are those of degree i-1 times one more coordinate (an index gather each)
        self.feat_dim = dh
        prev: list[tuple[int, ...]] = [(j,) for j in range(dh)]
        for i in range(2, config.poly_degree + 1):
            combos = list(itertools.combinations_with_replacement(range(dh), i))
            where = {c: n for n, c in enumerate(prev)}
            mult = [math.factorial(i) / math.prod(math.factorial(c.count(j)) for j in set(c)) for c in combos]
            self.register_buffer(f"mono_prev_{i}", torch.tensor([where[c[:-1]] for c in combos]), persistent=False)
            self.register_buffer(f"mono_last_{i}", torch.tensor([c[-1] for c in combos]), persistent=False)
            self.register_buffer(f"mono_scale_{i}", torch.tensor(mult, dtype=torch.float64).sqrt(), persistent=False)
            self.feat_dim += len(combos)
            prev = combos
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.conv = ShortConv(3 * d, config.conv_kernel) if config.conv_kernel > 0 else None
        self.gates = nn.Linear(d, 4 * h)  # alpha, eta, theta, gamma logits per head
        with torch.no_grad():
            self.gates.weight.mul_(0.1)
            self.gates.bias.copy_(
                torch.tensor(
                    [
                        config.init_decay_bias,
                        config.init_lr_bias,
                        config.init_momentum_bias,
                        config.init_gamma_bias,
                    ]
                ).repeat_interleave(h)
            )
        coeffs = torch.tensor([1.0 / math.factorial(i) for i in range(1, config.poly_degree + 1)])
        self.poly_coeffs = nn.Parameter(coeffs.repeat(h, 1))  # (H, p)
        self.out = nn.Linear(d, d, bias=False)
        # initial memory (learned): shapes (H, out, in)
        du = self.feat_dim
        if config.memory == "linear":
            self.init_mem = nn.ParameterDict({"w": nn.Parameter(torch.zeros(h, dh, du))})
        else:
            hidden = config.mlp_expansion * dh
            self.init_mem = nn.ParameterDict(
                {
                    "w1": nn.Parameter(torch.randn(h, hidden, du) / math.sqrt(du)),
                    "w2": nn.Parameter(torch.zeros(h, dh, hidden)),
                    "wr": nn.Parameter(torch.zeros(h, dh, du)),
                }
            )

    # ---- pieces --------------------------------------------------------------------------------------------
    def features(self, k: torch.Tensor) -> torch.Tensor:
        """Polynomial features of unit keys: (B, H, T, d) -> (B, H, T, feat_dim).

        Degree i contributes a_i * sqrt(multinomial) * prod(k[idx]) over the distinct monomials idx, so that
        phi(k) . phi(q) = sum_i a_i^2 (k . q)^i exactly while storing C(d+i-1, i) instead of d^i numbers.
        """
        coeffs = self.poly_coeffs[None, :, None, :]  # (1, H, 1, p)
        parts = [coeffs[..., 0:1] * k]  # (B, H, T, d)
        mono = k  # (B, H, T, M_1)
        for i in range(2, self.config.poly_degree + 1):
            prev, last = getattr(self, f"mono_prev_{i}"), getattr(self, f"mono_last_{i}")  # (M_i,) indices
            mono = mono[..., prev] * k[..., last]  # (B, H, T, M_i)
            scale = getattr(self, f"mono_scale_{i}").to(k.dtype)  # (M_i,)
            parts.append(coeffs[..., i - 1 : i] * scale * mono)
        return torch.cat(parts, dim=-1)  # (B, H, T, feat_dim)

    def memory_forward(self, mem: dict[str, torch.Tensor], u: torch.Tensor) -> torch.Tensor:
        """Apply per-token memories. mem[p]: (B, H, N, out, in); u: (B, H, N, in) -> (B, H, N, d)."""
        if self.config.memory == "linear":
            return torch.einsum("bhnoi,bhni->bhno", mem["w"], u)
        hid = F.silu(torch.einsum("bhnoi,bhni->bhno", mem["w1"], u))  # (B, H, N, hidden)
        return torch.einsum("bhnoi,bhni->bhno", mem["w2"], hid) + torch.einsum("bhnoi,bhni->bhno", mem["wr"], u)

    def token_grads(
        self, mem: dict[str, torch.Tensor], u: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Per-token gradients of gamma_i/2 ||M(u_i) - v_i||^2 at one memory per (B, H).

        mem[p]: (B, H, out, in); u: (B, H, N, in); v: (B, H, N, d); gamma: (B, H, N) -> {p: (B, H, N, out,
        in)}. Written out by hand (checked against autograd in the tests) so the outer model can backprop
        through it.
        """
        g = gamma[..., None]  # (B, H, N, 1)
        if self.config.memory == "linear":
            err = g * (torch.einsum("bhoi,bhni->bhno", mem["w"], u) - v)  # (B, H, N, d)
            return {"w": err[..., :, None] * u[..., None, :]}  # (B, H, N, d, in)
        pre = torch.einsum("bhoi,bhni->bhno", mem["w1"], u)  # (B, H, N, hidden)
        sig = torch.sigmoid(pre)
        hid = pre * sig  # (B, H, N, hidden)
        pred = torch.einsum("bhoi,bhni->bhno", mem["w2"], hid) + torch.einsum("bhoi,bhni->bhno", mem["wr"], u)
        err = g * (pred - v)  # (B, H, N, d)
        d_hid = torch.einsum("bhoi,bhno->bhni", mem["w2"], err)  # (B, H, N, hidden)
        d_pre = d_hid * sig * (1 + pre * (1 - sig))  # (B, H, N, hidden)
        return {
            "w1": d_pre[..., :, None] * u[..., None, :],  # (B, H, N, hidden, in)
            "w2": err[..., :, None] * hid[..., None, :],  # (B, H, N, d, hidden)
            "wr": err[..., :, None] * u[..., None, :],  # (B, H, N, d, in)
        }

    def initial_state(self, batch: int) -> State:
        cfg, h, du = self.config, self.config.n_heads, self.feat_dim
        state: State = {}
        for name, p in self.init_mem.items():
            m = p[None].expand(batch, *p.shape)  # (B, H, out, in)
            state[f"mem.{name}"] = m
            state[f"anchor.{name}"] = m
            state[f"mom.{name}"] = torch.zeros_like(m)
        w = cfg.omega_window - 1
        state["buf_u"] = p.new_zeros(batch, h, w, du)  # (B, H, c-1, in)
        state["buf_v"] = p.new_zeros(batch, h, w, self.head_dim)  # (B, H, c-1, d)
        state["buf_g"] = p.new_zeros(batch, h, w)  # (B, H, c-1): gamma 0 = no contribution
        state["pos"] = torch.tensor(0)
        return state

    # ---- one chunk -----------------------------------------------------------------------------------------
    def _chunk(
        self, state: State, u: torch.Tensor, v: torch.Tensor, uq: torch.Tensor, gates: torch.Tensor
    ) -> tuple[torch.Tensor, State]:
        """u, uq: (B, H, n, in); v: (B, H, n, d); gates: (B, H, n, 4) logits -> y (B, H, n, d), new state."""
        cfg = self.config
        n = u.shape[2]
        names = list(self.init_mem.keys())
        log_alpha = F.logsigmoid(gates[..., 0])  # (B, H, n)
        eta = cfg.max_lr * torch.sigmoid(gates[..., 1])  # (B, H, n)
        log_theta = F.logsigmoid(gates[..., 2])  # (B, H, n)
        gamma = torch.sigmoid(gates[..., 3])  # (B, H, n)

        # Omega rule: per-token gradients at the anchor memory over [c-1 buffered tokens, chunk tokens]
        w = cfg.omega_window - 1
        u_ext = torch.cat([state["buf_u"], u], dim=2)  # (B, H, w+n, in)
        v_ext = torch.cat([state["buf_v"], v], dim=2)  # (B, H, w+n, d)
        g_ext = torch.cat([state["buf_g"], gamma], dim=2)  # (B, H, w+n)
        anchor = {p: state[f"anchor.{p}"] for p in names}

        if cfg.memory == "linear" and not cfg.newton_schulz and cfg.fast_linear:
            y, new_state = self._scan_linear(state, anchor["w"], u_ext, v_ext, g_ext, uq, log_alpha, eta, log_theta)
        else:
            y, new_state = self._scan_general(state, anchor, u_ext, v_ext, g_ext, uq, log_alpha, eta, log_theta)

        pos = (int(state["pos"]) + n) % cfg.chunk_size
        for p in names:
            new_state[f"anchor.{p}"] = new_state[f"mem.{p}"] if pos == 0 else anchor[p]
        new_state["buf_u"] = u_ext[:, :, u_ext.shape[2] - w :]
        new_state["buf_v"] = v_ext[:, :, v_ext.shape[2] - w :]
        new_state["buf_g"] = g_ext[:, :, g_ext.shape[2] - w :]
        new_state["pos"] = torch.tensor(pos)
        return y, new_state

    def _scan_general(
        self,
        state: State,
        anchor: dict[str, torch.Tensor],
        u_ext: torch.Tensor,
        v_ext: torch.Tensor,
        g_ext: torch.Tensor,
        uq: torch.Tensor,
        log_alpha: torch.Tensor,
        eta: torch.Tensor,
        log_theta: torch.Tensor,
    ) -> tuple[torch.Tensor, State]:
        """Any memory, optional Newton-Schulz: materialises the per-token momentum and memory of the chunk."""
        cfg = self.config
        n = uq.shape[2]
        w = cfg.omega_window - 1
        grads = self.token_grads(anchor, u_ext, v_ext, g_ext)  # {p: (B, H, w+n, out, in)}
        cum_a = torch.cumsum(log_alpha, dim=-1)  # (B, H, n)
        dec_a = decay_matrix(cum_a)  # (B, H, n, n)
        cum_t = torch.cumsum(log_theta, dim=-1)  # (B, H, n)
        dec_t = decay_matrix(cum_t)  # (B, H, n, n)
        new_state: State = {}
        mems = {}
        for p, g_tok in grads.items():
            g = sum(g_tok[:, :, j : j + n] for j in range(w + 1)) / (w + 1)  # Omega window: (B, H, n, out, in)
            if cfg.momentum:
                s_prev = state[f"mom.{p}"][:, :, None]  # (B, H, 1, out, in)
                g = -torch.expm1(log_theta)[..., None, None] * g  # (1 - theta_t) G_t
                s = torch.einsum("bhts,bhsoi->bhtoi", dec_t, g) + cum_t.exp()[..., None, None] * s_prev
                new_state[f"mom.{p}"] = s[:, :, -1]  # (B, H, out, in)
            else:
                s = g  # type: ignore[assignment]  # (B, H, n, out, in)
                new_state[f"mom.{p}"] = state[f"mom.{p}"]
            upd = newton_schulz5(s, cfg.ns_steps) if cfg.newton_schulz else s  # (B, H, n, out, in)
            m_prev = state[f"mem.{p}"][:, :, None]  # (B, H, 1, out, in)
            decay_upd = torch.einsum("bhts,bhsoi->bhtoi", dec_a, eta[..., None, None] * upd)
            m = cum_a.exp()[..., None, None] * m_prev - decay_upd  # (B, H, n, out, in)
            mems[p] = m
            new_state[f"mem.{p}"] = m[:, :, -1]  # (B, H, out, in)
        return self.memory_forward(mems, uq), new_state  # (B, H, n, d)

    def _scan_linear(
        self,
        state: State,
        w_anchor: torch.Tensor,
        u_ext: torch.Tensor,
        v_ext: torch.Tensor,
        g_ext: torch.Tensor,
        uq: torch.Tensor,
        log_alpha: torch.Tensor,
        eta: torch.Tensor,
        log_theta: torch.Tensor,
    ) -> tuple[torch.Tensor, State]:
        """Linear memory without Newton-Schulz: the same result without per-token matrices.

        Everything is linear in the token gradients e_j u_j^T, so with K = D_alpha diag(eta) D_theta
        diag(1 - theta) Win (Win[r, j] = 1/c when token j is in the Omega window of token r):
            y_t = A_t M_prev q_t - (D_alpha eta Theta)_t S_prev q_t - sum_j K[t, j] (u_j . q_t) e_j
        """
        cfg = self.config
        n, w = uq.shape[2], cfg.omega_window - 1
        err = g_ext[..., None] * (torch.einsum("bhoi,bhni->bhno", w_anchor, u_ext) - v_ext)  # (B, H, w+n, d)
        r = torch.arange(n, device=uq.device)[:, None]  # (n, 1)
        j = torch.arange(w + n, device=uq.device)[None, :]  # (1, w+n)
        win = ((j >= r) & (j <= r + w)).to(uq.dtype) / (w + 1)  # (n, w+n) Omega window average
        cum_a = torch.cumsum(log_alpha, dim=-1)  # (B, H, n)
        dec_a = decay_matrix(cum_a)  # (B, H, n, n)
        if cfg.momentum:
            cum_t = torch.cumsum(log_theta, dim=-1)  # (B, H, n)
            mom_win = decay_matrix(cum_t) @ (-torch.expm1(log_theta)[..., None] * win)  # (B, H, n, w+n)
            theta_prod = cum_t.exp()  # (B, H, n)
        else:
            mom_win = win.expand(*uq.shape[:2], n, w + n)  # (B, H, n, w+n)
            theta_prod = torch.zeros_like(cum_a)  # (B, H, n)
        kmat = dec_a @ (eta[..., None] * mom_win)  # (B, H, n, w+n)
        coef_s = (dec_a @ (eta * theta_prod)[..., None])[..., 0]  # (B, H, n)
        m_prev, s_prev = state["mem.w"], state["mom.w"]  # (B, H, d, in)
        scores = kmat * (uq @ u_ext.transpose(-1, -2))  # (B, H, n, w+n)
        y = (
            cum_a.exp()[..., None] * (uq @ m_prev.transpose(-1, -2))
            - coef_s[..., None] * (uq @ s_prev.transpose(-1, -2))
            - scores @ err
        )  # (B, H, n, d)
        e_last = (kmat[:, :, -1, :, None] * err).transpose(-1, -2)  # (B, H, d, w+n)
        m_new = cum_a[..., -1:, None].exp() * m_prev - coef_s[..., -1:, None] * s_prev - e_last @ u_ext
        if cfg.momentum:
            s_new = theta_prod[..., -1:, None] * s_prev + (mom_win[:, :, -1, :, None] * err).transpose(-1, -2) @ u_ext
        else:
            s_new = s_prev
        return y, {"mem.w": m_new, "mom.w": s_new}  # (B, H, n, d), {(B, H, d, in)}

    # ---- the layer -----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        b, t, d = x.shape
        cfg, h = self.config, self.config.n_heads
        if state is None:
            state = self.initial_state(b)
        qkv = self.qkv(x)  # (B, T, 3D)
        conv_cache = state.get("conv")
        if self.conv is not None:
            qkv, conv_cache = self.conv(qkv, conv_cache)  # (B, T, 3D)
        q, k, v = (split_heads(z, h) for z in qkv.split(d, dim=-1))  # 3 x (B, H, T, dh)
        uq = l2_normalize(self.features(l2_normalize(q)))  # (B, H, T, in)
        uk = l2_normalize(self.features(l2_normalize(k)))  # (B, H, T, in)
        gates = self.gates(x).view(b, t, 4, h).permute(0, 3, 1, 2)  # (B, H, T, 4)

        first = min(t, cfg.chunk_size - int(state["pos"]))  # finish the chunk the state is inside of
        sizes = [first] + [cfg.chunk_size] * ((t - first) // cfg.chunk_size)
        if sum(sizes) < t:
            sizes.append(t - sum(sizes))
        outs = []
        pieces = (torch.split(z, sizes, dim=2) for z in (uk, v, uq, gates))  # split: cheap backward
        for uk_c, v_c, uq_c, g_c in zip(*pieces, strict=True):
            y, state = self._chunk(state, uk_c, v_c, uq_c, g_c)
            outs.append(y)
        if conv_cache is not None:
            state["conv"] = conv_cache
        y = torch.cat(outs, dim=2)  # (B, H, T, dh)
        return self.out(merge_heads(y)), state  # (B, T, D)
