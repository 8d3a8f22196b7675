"""Latent ODEs for irregularly sampled time series (Chen et al. 2018 §5; Rubanova et al. 2019), and the RNN
baseline that sees the time gaps as an input (GRU-Δt, Rubanova et al.'s "RNN-Δt").

Latent ODE: a GRU run backwards in time over the observed (value, mask, time) triples gives q(z0) =
N(mu, sigma^2); z0 ~ q is solved forward by dz/dt = f(z) (diffrax, adaptive steps) and saved at *each series' own
times* (`SaveAt(ts=...)` inside `jax.vmap`); a decoder maps z(t) to the mean of a Gaussian observation model. The
training loss is the negative ELBO, -E_q[log p(x | z)] + KL(q(z0) || N(0, I)), over the observed entries.
"""

from __future__ import annotations

import abc
import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ode_nets.continuous.data import IrregularSeries
from ode_nets.fields._base import AbstractField
from ode_nets.fields.concat_squash import AutonomousMLPField
from ode_nets.fields.resnet import activation
from ode_nets.fields.time_params import ParamInit
from ode_nets.solvers.stepping import AdaptiveSteps


class AbstractSeriesModel(eqx.Module):
    """A model that reads a series' observed points and predicts its values at any later-or-between times."""

    @abc.abstractmethod
    def predict(self, obs_t: Array, obs_x: Array, obs_m: Array, query_t: Array) -> Array:
        """Values (n, Q, D) at the sorted times `query_t` (n, Q) from the observations (n, K[, D])."""


def gru_over(cell: eqx.nn.GRUCell, inputs: Array) -> Array:
    """The GRU's final hidden state after reading `inputs` (K, F) in order, from h = 0."""
    step = lambda h, inp: (cell(inp, h), None)  # noqa: E731
    return jax.lax.scan(step, jnp.zeros(cell.hidden_size, inputs.dtype), inputs)[0]


class Recognition(eqx.Module):
    """q(z0 | observations): a GRU run backwards over (x * mask, mask, t), then a linear map to (mu, log sigma)."""

    cell: eqx.nn.GRUCell
    head: eqx.nn.Linear

    @classmethod
    def init(cls, data_dim: int, latent_dim: int, hidden: int, key: PRNGKeyArray) -> "Recognition":
        k_cell, k_head = jax.random.split(key)
        return cls(eqx.nn.GRUCell(2 * data_dim + 1, hidden, key=k_cell), eqx.nn.Linear(hidden, 2 * latent_dim, key=k_head))

    def __call__(self, t: Float[Array, " K"], x: Float[Array, "K D"], m: Float[Array, "K D"]) -> tuple[Array, Array]:
        inputs = jnp.concatenate([x * m, m, t[:, None]], -1)[::-1]  # backwards: the last point is read first
        mean, log_std = jnp.split(self.head(gru_over(self.cell, inputs)), 2)
        return mean, log_std


def solve_at(field: AbstractField, z0: Array, ts: Float[Array, " K"], solver: diffrax.AbstractSolver,
             stepping: AdaptiveSteps) -> Array:
    """z(ts) (K, latent) of dz/dt = field(t, z) from z(0) = z0, saved at this series' own sorted times `ts`."""
    sol = diffrax.diffeqsolve(diffrax.ODETerm(field), solver, 0.0, ts[-1], None, z0, saveat=diffrax.SaveAt(ts=ts),
                              stepsize_controller=diffrax.PIDController(rtol=stepping.rtol, atol=stepping.atol),
                              max_steps=stepping.max_steps)
    return sol.ys


def gaussian_log_likelihood(x: Array, mean: Array, std: float, mask: Array) -> Array:
    """sum over observed entries of log N(x; mean, std^2), per series (leading axis)."""
    log_density = -0.5 * ((x - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)
    return jnp.sum((log_density * mask).reshape(x.shape[0], -1), axis=-1)


def kl_standard_normal(mean: Array, log_std: Array) -> Array:
    """KL(N(mean, exp(log_std)^2) || N(0, I)), summed over the last axis."""
    return jnp.sum(0.5 * (mean**2 + jnp.exp(2 * log_std) - 1) - log_std, axis=-1)


class LatentODE(AbstractSeriesModel):
    """Recognition GRU -> z0 -> latent ODE at each series' times -> decoder (Chen et al. 2018, Fig. 6)."""

    encoder: Recognition
    field: AbstractField
    decoder: eqx.nn.MLP
    solver: diffrax.AbstractSolver = diffrax.Tsit5()
    stepping: AdaptiveSteps = AdaptiveSteps(rtol=1e-3, atol=1e-4, max_steps=2048)
    obs_std: float = eqx.field(static=True, default=0.1)

    @classmethod
    def init(cls, key: PRNGKeyArray, *, data_dim: int = 2, latent_dim: int = 4, rec_hidden: int = 25,
             field_width: int = 32, dec_width: int = 32, dec_activation: str = "relu", **settings: object
             ) -> "LatentODE":
        """A latent ODE with random weights; `dec_activation` from `ACTIVATIONS` (relu extrapolates growing
        outputs, tanh saturates: bounded data); `settings`: solver, stepping, obs_std."""
        k_enc, k_field, k_dec = jax.random.split(key, 3)
        field = AutonomousMLPField.init((latent_dim,), ParamInit(), k_field, width=field_width)
        decoder = eqx.nn.MLP(latent_dim, data_dim, dec_width, 1, activation=activation(dec_activation), key=k_dec)
        return cls(Recognition.init(data_dim, latent_dim, rec_hidden, k_enc), field, decoder, **settings)

    def encode(self, obs_t: Array, obs_x: Array, obs_m: Array) -> tuple[Array, Array]:
        """(mu, log sigma) of q(z0) per series."""
        return jax.vmap(self.encoder)(obs_t, obs_x, obs_m)

    def latent_paths(self, z0: Float[Array, "n L"], ts: Float[Array, "n K"]) -> Array:
        """z at each series' own times: one adaptive solve per series, vmapped (n, K, L)."""
        return jax.vmap(lambda z, t: solve_at(self.field, z, t, self.solver, self.stepping))(z0, ts)

    def decode(self, z: Array) -> Array:
        return jax.vmap(jax.vmap(self.decoder))(z)

    def predict(self, obs_t: Array, obs_x: Array, obs_m: Array, query_t: Array) -> Array:
        """Decoded latent path from the posterior mean of z0, at `query_t`."""
        mean, _ = self.encode(obs_t, obs_x, obs_m)
        return self.decode(self.latent_paths(mean, query_t))


def random_context(obs_t: Array, min_context: float, key: PRNGKeyArray) -> Array:
    """(n, K) True for the points before a random cut at a uniform fraction in [min_context, 1] of each series'
    last observed time (all True for min_context = 1)."""
    cut = jax.random.uniform(key, (obs_t.shape[0], 1), minval=min_context) * obs_t[:, -1:]
    return obs_t <= cut


class NegativeELBO(eqx.Module):
    """-ELBO per series: -log p(x_obs | z) (Gaussian, std `model.obs_std`, observed entries) + KL(q(z0) || N(0, I)),
    one reparameterised z0 per series; `mse` is the reconstruction error of the observed entries.

    With `min_context` < 1, q(z0) reads only the points before a random cut (`random_context`) while the
    likelihood covers all observed points: the model is trained to forecast past what it has read (Rubanova et
    al.'s extrapolation training; the baseline gets the same context).
    """

    min_context: float = 1.0

    def __call__(self, model: LatentODE, batch: IrregularSeries, key: PRNGKeyArray) -> tuple[Array, dict]:
        k_cut, k_z = jax.random.split(key)
        context = random_context(batch.obs_t, self.min_context, k_cut)[..., None]
        mean, log_std = model.encode(batch.obs_t, batch.obs_x * context, batch.obs_m * context)
        z0 = mean + jnp.exp(log_std) * jax.random.normal(k_z, mean.shape)
        x_hat = model.decode(model.latent_paths(z0, batch.obs_t))
        log_lik = gaussian_log_likelihood(batch.obs_x, x_hat, model.obs_std, batch.obs_m)
        kl = kl_standard_normal(mean, log_std)
        loss = jnp.mean(kl - log_lik)
        return loss, {"neg_log_lik": -jnp.mean(log_lik), "kl": jnp.mean(kl), "mse": masked_mse(x_hat, batch.obs_x,
                                                                                                 batch.obs_m)}


def masked_mse(prediction: Array, target: Array, mask: Array) -> Array:
    """Mean squared error over the entries where `mask` is 1."""
    return jnp.sum(mask * (prediction - target) ** 2) / jnp.maximum(jnp.sum(mask), 1.0)


class GRUDeltaT(AbstractSeriesModel):
    """The baseline: a GRU reading (x * mask, mask, Δt) in time order (Rubanova et al.'s RNN-Δt).

    The state changes only when a point is read; the value at any time t is predicted from the last state and the
    gap Δt = t - (time of the last point read), head(GRU((0, 0, Δt), h)). Query points (mask 0) are therefore
    predicted by one step over their gap, however many queries lie between two observations.
    """

    cell: eqx.nn.GRUCell
    head: eqx.nn.Linear

    @classmethod
    def init(cls, key: PRNGKeyArray, *, data_dim: int = 2, hidden: int = 64) -> "GRUDeltaT":
        k_cell, k_head = jax.random.split(key)
        return cls(eqx.nn.GRUCell(2 * data_dim + 1, hidden, key=k_cell), eqx.nn.Linear(hidden, data_dim, key=k_head))

    def run(self, t: Float[Array, " K"], x: Float[Array, "K D"], m: Float[Array, "K D"]) -> Array:
        """Predictions (K, D) at the sorted times `t`, each made before reading that point."""

        def step(carry: tuple[Array, Array], inputs: tuple[Array, Array, Array]) -> tuple[tuple, Array]:
            h, t_last = carry
            t_i, x_i, m_i = inputs
            gap = (t_i - t_last)[None]
            prediction = self.head(self.cell(jnp.concatenate([jnp.zeros_like(x_i), jnp.zeros_like(m_i), gap]), h))
            read = jnp.any(m_i > 0)
            h = jnp.where(read, self.cell(jnp.concatenate([x_i * m_i, m_i, gap]), h), h)
            return (h, jnp.where(read, t_i, t_last)), prediction

        h0 = jnp.zeros(self.cell.hidden_size, x.dtype)
        return jax.lax.scan(step, (h0, jnp.zeros((), t.dtype)), (t, x, m))[1]

    def predict_one(self, obs_t: Array, obs_x: Array, obs_m: Array, query_t: Array) -> Array:
        """One series: merge observed and query points in time order, run, read the query predictions."""
        t = jnp.concatenate([obs_t, query_t])
        x = jnp.concatenate([obs_x, jnp.zeros((len(query_t), obs_x.shape[-1]), obs_x.dtype)])
        m = jnp.concatenate([obs_m, jnp.zeros_like(x[len(obs_t):])])
        order = jnp.argsort(t, stable=True)
        prediction = jnp.zeros_like(x).at[order].set(self.run(t[order], x[order], m[order]))
        return prediction[len(obs_t):]

    def predict(self, obs_t: Array, obs_x: Array, obs_m: Array, query_t: Array) -> Array:
        return jax.vmap(self.predict_one)(obs_t, obs_x, obs_m, query_t)


class MaskedPredictionMSE(eqx.Module):
    """The baseline's loss: each observed point predicted before it is read. A random fraction `hide` of the
    inputs and every input after a random cut (`random_context` with `min_context`) are hidden, so the GRU learns
    to predict across gaps, as it must for held-out and extrapolated points."""

    hide: float = 0.5
    min_context: float = 0.4

    def __call__(self, model: GRUDeltaT, batch: IrregularSeries, key: PRNGKeyArray) -> tuple[Array, dict]:
        k_hide, k_cut = jax.random.split(key)
        context = random_context(batch.obs_t, self.min_context, k_cut)
        shown = jax.random.bernoulli(k_hide, 1 - self.hide, batch.obs_t.shape) & context
        prediction = jax.vmap(model.run)(batch.obs_t, batch.obs_x, batch.obs_m * shown[..., None])
        mse = masked_mse(prediction, batch.obs_x, batch.obs_m)
        return mse, {"mse": mse}


def forecast_metrics(model: AbstractSeriesModel, data: IrregularSeries) -> dict[str, float]:
    """Interpolation (held-out times inside the window) and extrapolation (after it) MSE, against the noisy
    held-out observations and against the clean trajectories."""
    query_t = jnp.concatenate([data.int_t, data.ext_t], 1)  # sorted: int_t <= t_obs < ext_t
    prediction = _predict(model, data.obs_t, data.obs_x, data.obs_m, query_t)
    k = data.int_t.shape[1]
    parts = {"interp": (prediction[:, :k], data.int_x, data.int_clean),
             "extrap": (prediction[:, k:], data.ext_x, data.ext_clean)}
    out = {}
    for name, (pred, noisy, clean) in parts.items():
        out[f"{name}_mse"] = float(jnp.mean((pred - noisy) ** 2))
        out[f"{name}_mse_clean"] = float(jnp.mean((pred - clean) ** 2))
    return out


@eqx.filter_jit
def _predict(model: AbstractSeriesModel, obs_t: Array, obs_x: Array, obs_m: Array, query_t: Array) -> Array:
    return model.predict(obs_t, obs_x, obs_m, query_t)
