"""The replay-window critic: Q~(s, a) = Q_psi(s, a), fitted on the last W rollouts with TD(lambda) targets.

The advantage head (:mod:`hybrid_pg.sources.critic`) is regressed on *one* rollout's normalised GAE
advantages; its action-gradient is biased enough that pure pathwise training collapses on
Pendulum. This source keeps its own Q network, its own Adam and a replay of the last ``window``
rollouts (by default the window the weight keeps, ``lambda_window``), and refits Q before every
update.

Data (per stored step, as SB3's rollout buffer holds it):

* the observation: already normalised under ``VecNormalize(norm_obs)``, so Q conditions on exactly
  what the policy sees (older rollouts keep the normaliser statistics of their time, a drift the
  window's shortness bounds);
* the action *as applied* (``clip`` to the Box);
* the reward the algorithm learns from: the normalised one under ``VecNormalize(norm_reward)``, so Q,
  the buffer's returns and advantages and V's bootstrap are all in the same units; for a time-limit
  truncation SB3 has already added gamma * V(terminal obs) to it;
* whether the next step starts a new episode (the next observation is the next row, or the
  observation after the rollout for its last row).

Targets: TD(lambda) returns along each stored trajectory,

    G_t = r_t + gamma * (1 - done_{t+1}) * ((1 - lambda) * V(s_{t+1}) + lambda * G_{t+1}),

bootstrapped with the policy's value head V *as it is now* (recomputed for every stored rollout at
every refresh). Why V and not a target Q: V is the current policy's value, fitted on-policy by the
algorithm every update, so the bootstrap follows the policy with no target-network lag; the
regression targets are fixed during a fit (plain supervised regression, no bootstrapping on Q
itself, so no deadly-triad divergence on a small replay); and it costs one V pass per stored
state. The price: inside the lambda-trace, older rollouts' later actions were drawn by older
policies. With ``td_lambda`` = ``gae_lambda`` (the same bias/variance trade as the score side's
advantages) and KL-limited updates over a short window the trace's off-policy bias is small; the
newest rollout's targets are exactly the buffer's returns up to V having moved.

Schedule: :meth:`refresh` runs at the start of ``train``, before the update: this rollout joins
the replay, targets are recomputed, and Q takes ``epochs`` passes of minibatch Adam over the
whole replay (warm-started from the previous fit). So the update's pathwise term uses a critic
that has seen this rollout. That is not the weight's circularity: the weight lam comes from
previous rollouts' moments only, while the critic fitted on this rollout is the source of this
rollout's pathwise gradients, like the advantage head, which is also regressed on the rollout it
differentiates. (The pathwise gradient of a sample is then correlated with that sample's own
return noise through Q's fit; with thousands of samples per fit the effect is that of any
fitted critic.)

Q is a standalone MLP (smooth ELU activations, so its action-gradient is smooth) on
``[standardised obs, standardised action]``; its output is ``center + scale * net(...)`` with
``center``/``scale`` the targets' mean and std at the first fit. The input standardisers (mean and
std of the first fit's observations and applied actions) are also set once and kept fixed
afterwards, so the warm start of later fits stays valid.
Q is in reward units (``reward_units = True``): the algorithm divides the pathwise term by the
advantage normaliser, exactly like the advantages. Inside the pathwise surrogate Q's weights are
frozen (:class:`hybrid_pg.surrogates.FrozenModule`).

Persistence: after every fit the source's state (network, optimizer, normalisers, replay) is put on
the algorithm as ``algorithm.replay_critic_state``, a plain attribute that SB3's ``save`` pickles
with the model; the factory restores it on ``load`` (and on ``set_env``), so a resumed run
continues with the same critic and replay.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Sequence

import numpy as np
import torch as th
from gymnasium import spaces
from torch import nn
from torch.nn import functional as F

from hybrid_pg.sources.base import Context, MeanFn, PathwiseSource
from hybrid_pg.surrogates import FrozenModule

#: attribute of the algorithm that carries the source's state through ``save``/``load``
STATE_ATTRIBUTE = "replay_critic_state"


class QNetwork(nn.Module):
    """Q(s, a) = center + scale * MLP([(s - obs_mean) / obs_std, (a - action_mean) / action_std])."""

    # buffers (registered in __init__; saved with the network), declared for type checkers
    action_mean: th.Tensor
    action_std: th.Tensor
    obs_mean: th.Tensor
    obs_std: th.Tensor
    center: th.Tensor
    scale: th.Tensor
    initialised: th.Tensor

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        width = obs_dim + act_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ELU()]
            width = size
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.register_buffer("action_mean", th.zeros(act_dim))
        self.register_buffer("action_std", th.ones(act_dim))
        self.register_buffer("obs_mean", th.zeros(obs_dim))
        self.register_buffer("obs_std", th.ones(obs_dim))
        self.register_buffer("center", th.zeros(()))
        self.register_buffer("scale", th.ones(()))
        self.register_buffer("initialised", th.zeros((), dtype=th.bool))

    def forward(self, obs: th.Tensor, action: th.Tensor) -> th.Tensor:
        x = th.cat([(obs - self.obs_mean) / self.obs_std, (action - self.action_mean) / self.action_std], dim=-1)
        return self.center + self.scale * self.net(x).squeeze(-1)


class ReplayCriticSource(PathwiseSource):
    """Pathwise values from a Q network fitted on the last ``window`` rollouts (``pathwise_source="replay_critic"``).

    :param policy: the algorithm's policy (its value head bootstraps the targets; its ``clip_action``
        maps actions to the Box).
    :param gamma: discount of the targets (the algorithm's ``gamma``).
    :param window: rollouts kept in the replay (default 8, the default ``lambda_window``; the
        factory passes the algorithm's ``lambda_window``).
    :param td_lambda: lambda of the TD(lambda) targets (the factory passes ``gae_lambda``; 0 gives
        one-step TD targets r + gamma V(s'), 1 Monte-Carlo returns to the end of the rollout).
    :param hidden: hidden layer sizes of Q (default (64, 64), ELU).
    :param learning_rate: Adam step size of Q (default 1e-3).
    :param epochs: passes over the whole replay per refresh (default 2; the first fit takes
        ``first_epochs`` instead, default 10, since it starts from scratch).
    :param batch_size: minibatch size of Q's regression (default 256).
    :param max_grad_norm: gradient-norm clip of Q's steps (default 10).
    :param seed: seed of Q's initialisation and minibatch order (None: from torch's global RNG).
    """

    name = "replay_critic"
    exact = False
    reward_units = True

    def __init__(
        self,
        policy: Any,
        gamma: float,
        window: int = 8,
        td_lambda: float = 0.95,
        hidden: Sequence[int] = (64, 64),
        learning_rate: float = 1e-3,
        epochs: int = 2,
        first_epochs: int = 10,
        batch_size: int = 256,
        max_grad_norm: float = 10.0,
        seed: Optional[int] = None,
    ) -> None:
        obs_space, act_space = policy.observation_space, policy.action_space
        if not isinstance(obs_space, spaces.Box):
            raise ValueError(f"pathwise_source='replay_critic' needs a Box observation space, got {obs_space}")
        if window < 1 or epochs < 0 or first_epochs < 0 or batch_size < 1 or not 0.0 <= td_lambda <= 1.0:
            raise ValueError("replay critic: need window >= 1, epochs >= 0, first_epochs >= 0, batch_size >= 1, 0 <= td_lambda <= 1")
        self.policy = policy
        self.gamma = float(gamma)
        self.window = int(window)
        self.td_lambda = float(td_lambda)
        self.epochs, self.first_epochs = int(epochs), int(first_epochs)
        self.batch_size = int(batch_size)
        self.max_grad_norm = float(max_grad_norm)
        self.obs_dim = int(np.prod(obs_space.shape))
        self._generator = th.Generator()
        if seed is not None:
            self._generator.manual_seed(int(seed))
        else:
            self._generator.manual_seed(int(th.randint(0, 2**62, (1,)).item()))
        with th.random.fork_rng(devices=[]):
            th.manual_seed(int(th.randint(0, 2**62, (1,), generator=self._generator).item()))
            self.q = QNetwork(self.obs_dim, int(np.prod(act_space.shape)), hidden).to(policy.device)
        self.optimizer = th.optim.Adam(self.q.parameters(), lr=learning_rate)
        self._frozen = FrozenModule(self.q)
        self.replay: Deque[Dict[str, np.ndarray]] = deque(maxlen=self.window)
        self.last_fit: Dict[str, float] = {}

    # ------------------------------------------------------------------------------------------
    # the interface
    # ------------------------------------------------------------------------------------------

    def refresh(self, algorithm: Any) -> None:
        """Add the algorithm's current rollout to the replay, recompute the targets, fit Q."""
        self.add_rollout(algorithm.rollout_buffer, algorithm._last_obs, algorithm._last_episode_starts)
        fit = self.fit()
        setattr(algorithm, STATE_ATTRIBUTE, self.state_dict())
        logger = getattr(algorithm, "_logger", None)
        if logger is not None:
            for key, value in fit.items():
                logger.record(f"replay_critic/{key}", value)

    def context(self, policy: Any, observations: Any, actions: th.Tensor, generator: Optional[th.Generator] = None) -> Context:
        return {"obs": self._flat(observations)}

    def value(self, mean: th.Tensor, log_std: th.Tensor, eps: th.Tensor, context: Context, mean_fn: Optional[MeanFn] = None) -> th.Tensor:
        action = self.policy.clip_action(mean + th.exp(log_std) * eps)
        return self._frozen(context["obs"], action)

    # ------------------------------------------------------------------------------------------
    # replay and fit
    # ------------------------------------------------------------------------------------------

    def add_rollout(self, buffer: Any, last_obs: Any, last_episode_starts: Any) -> None:
        """Copy one SB3 rollout (``(n_steps, n_envs, ...)`` arrays) into the replay.

        ``last_obs``/``last_episode_starts``: the observation after the rollout and whether it starts a
        new episode (SB3's ``_last_obs``/``_last_episode_starts``), the successor of the last row.
        """
        obs = np.asarray(buffer.observations, dtype=np.float32)
        n_steps, n_envs = obs.shape[:2]
        obs = obs.reshape(n_steps, n_envs, self.obs_dim)
        actions = np.asarray(buffer.actions, dtype=np.float32).reshape(n_steps, n_envs, -1)
        with th.no_grad():
            clipped = self.policy.clip_action(th.as_tensor(actions, device=self.policy.device)).cpu().numpy()
        starts = np.asarray(buffer.episode_starts, dtype=np.float32).reshape(n_steps, n_envs)
        last_starts = np.asarray(last_episode_starts, dtype=np.float32).reshape(1, n_envs)
        self.replay.append(
            dict(
                obs=obs.copy(),
                actions=clipped,
                rewards=np.asarray(buffer.rewards, dtype=np.float32).reshape(n_steps, n_envs).copy(),
                next_obs=np.concatenate([obs[1:], np.asarray(last_obs, dtype=np.float32).reshape(1, n_envs, self.obs_dim)]),
                # done after step t: step t + 1 starts a new episode (termination, or truncation whose
                # bootstrap SB3 already folded into the reward)
                dones=np.concatenate([starts[1:], last_starts]),
            )
        )

    def targets(self) -> List[np.ndarray]:
        """TD(lambda) returns of every stored rollout, bootstrapped with the policy's value head now."""
        out = []
        lam, gamma = self.td_lambda, self.gamma
        for roll in self.replay:
            with th.no_grad():
                next_values = self._values(roll["next_obs"])
            rewards, dones = roll["rewards"], roll["dones"]
            returns = np.zeros_like(rewards)
            following = next_values[-1]  # G_{t+1} of the last row: no data beyond it, the value
            for t in reversed(range(len(rewards))):
                alive = 1.0 - dones[t]
                returns[t] = rewards[t] + gamma * alive * ((1.0 - lam) * next_values[t] + lam * following)
                following = returns[t]
            out.append(returns)
        return out

    def fit(self, epochs: Optional[int] = None) -> Dict[str, float]:
        """Regress Q on the replay's TD(lambda) targets; returns the fit's losses (also in ``last_fit``)."""
        device = self.policy.device
        obs = th.as_tensor(np.concatenate([r["obs"].reshape(-1, self.obs_dim) for r in self.replay]), device=device)
        actions = th.as_tensor(
            np.concatenate([r["actions"].reshape(len(r["actions"]) * r["actions"].shape[1], -1) for r in self.replay]), device=device
        )
        targets = th.as_tensor(np.concatenate([g.reshape(-1) for g in self.targets()]), device=device)
        first = not bool(self.q.initialised)
        if first:
            with th.no_grad():
                self.q.obs_mean.copy_(obs.mean(0))
                self.q.obs_std.copy_(obs.std(0).clamp_min(1e-3) if len(obs) > 1 else th.ones_like(obs[0]))
                self.q.action_mean.copy_(actions.mean(0))
                self.q.action_std.copy_(actions.std(0).clamp_min(1e-3) if len(actions) > 1 else th.ones_like(actions[0]))
                self.q.center.copy_(targets.mean())
                self.q.scale.copy_(targets.std().clamp_min(1e-3) if len(targets) > 1 else th.ones(()))
                self.q.initialised.fill_(True)
        n_epochs = (self.first_epochs if first else self.epochs) if epochs is None else int(epochs)
        scale = float(self.q.scale)
        losses = []
        for _ in range(n_epochs):
            perm = th.randperm(len(targets), generator=self._generator).to(device)
            for start in range(0, len(targets), self.batch_size):
                idx = perm[start : start + self.batch_size]
                # the loss in units of the targets' scale: the step size does not depend on reward units
                loss = F.mse_loss(self.q(obs[idx], actions[idx]) / scale, targets[idx] / scale)
                self.optimizer.zero_grad()
                loss.backward()
                th.nn.utils.clip_grad_norm_(self.q.parameters(), self.max_grad_norm)
                self.optimizer.step()
                losses.append(loss.detach())
        with th.no_grad():
            residual = self.q(obs, actions) - targets
            explained = 1.0 - float(residual.var() / targets.var().clamp_min(1e-12)) if len(targets) > 1 else math.nan
        self.last_fit = {
            "loss": float(th.stack(losses).mean()) if losses else math.nan,
            "explained_variance": explained,
            "samples": float(len(targets)),
        }
        return self.last_fit

    def _values(self, obs: np.ndarray) -> np.ndarray:
        flat = th.as_tensor(obs.reshape(-1, self.obs_dim), device=self.policy.device)
        observations = flat.reshape(-1, *self.policy.observation_space.shape)
        return self.policy.predict_values(observations).reshape(obs.shape[:-1]).cpu().numpy()

    def _flat(self, observations: Any) -> th.Tensor:
        return th.as_tensor(observations, dtype=th.float32).reshape(len(observations), self.obs_dim)

    # ------------------------------------------------------------------------------------------
    # persistence
    # ------------------------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """Everything a resumed run needs (references to the live tensors: cheap to take after every fit)."""
        return {
            "q": self.q.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "replay": list(self.replay),
            "generator": self._generator.get_state(),
            "window": self.window,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.q.load_state_dict(state["q"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.replay = deque(state["replay"][-self.window :], maxlen=self.window)
        self._generator.set_state(state["generator"])
        self._frozen = FrozenModule(self.q)


def make_replay_critic(algorithm: Any, **kwargs: Any) -> ReplayCriticSource:
    """The registry's factory: window = ``lambda_window``, td_lambda = ``gae_lambda``, gamma and seed
    from the algorithm, a saved state restored. Other arguments: register your own factory, e.g.
    ``register_source("replay_critic", lambda alg: make_replay_critic(alg, epochs=4))``."""
    s = algorithm.settings
    defaults = dict(window=s.lambda_window, td_lambda=s.gae_lambda, seed=algorithm.seed)
    source = ReplayCriticSource(algorithm.policy, algorithm.gamma, **{**defaults, **kwargs})
    state = getattr(algorithm, STATE_ATTRIBUTE, None)
    if state is not None:
        source.load_state_dict(state)
    return source
