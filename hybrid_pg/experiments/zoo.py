"""HybridPG in the RL Baselines3 Zoo (``rl_zoo3``): train, enjoy and tune it with the zoo's scripts.

::

    python -m hybrid_pg.experiments.zoo train --algo hybrid_pg --env Pendulum-v1 -conf configs/zoo/hybrid_pg.yml [zoo options ...]
    python -m hybrid_pg.experiments.zoo train --algo hybrid_pg --env Pendulum-v1 -conf configs/zoo/hybrid_pg.yml -optimize --n-trials 20
    python -m hybrid_pg.experiments.zoo enjoy --algo hybrid_pg --env Pendulum-v1 -f logs --no-render

Everything after the command goes to the zoo's own ``train`` / ``enjoy`` unchanged (see their
``--help``). Before dispatching, :func:`register` makes the zoo know HybridPG:

* ``rl_zoo3.ALGOS["hybrid_pg"] = HybridPG`` (the zoo builds and loads models through this table);
* ``rl_zoo3.hyperparams_opt.HYPERPARAMS_SAMPLER["hybrid_pg"]``: the Optuna sampler for ``-optimize``
  (:func:`sample_hybrid_pg_params`);
* ``rl_zoo3.hyperparams_opt.HYPERPARAMS_CONVERTER["hybrid_pg"]``: turns a trial's raw parameters
  into HybridPG keywords (:func:`convert_hybrid_pg_params`); the zoo uses it to reload a stored
  Optuna trial (``--storage ... --study-name ... --trial-id ...``). Only versions of the zoo with
  that table get the entry;
* ``hybrid_pg_envs`` is imported, so the ``hybrid_pg/`` ids (e.g. ``hybrid_pg/Pendulum-v0``, whose
  differentiable model HybridPG uses with ``pathwise_source: model``) are registered.

Defaults this wrapper adds (each overridden by passing the option yourself):

* ``--num-threads 1``: the zoo otherwise lets torch use every core, which on small MLPs is mostly
  thread contention (a tiny Pendulum run took 3 min 17 s with all threads vs 13 s with one on a
  2-core machine). ``--num-threads N`` sets N; ``--num-threads -1`` keeps torch's default.
* ``train`` without ``-conf`` / ``--conf-file``: the packaged HybridPG hyperparameters
  (:data:`DEFAULT_ZOO_CONFIG`, ``hybrid_pg/experiments/configs/zoo/hybrid_pg.yml``; the repository's
  ``configs/zoo/hybrid_pg.yml`` links to it), in the zoo's format (one entry per env id). The zoo's
  own default, ``rl_zoo3/hyperparams/hybrid_pg.yml``, does not exist.

The zoo is an optional dependency: ``pip install "hybrid-pg[zoo]"`` (``rl_zoo3``, and ``requests``,
which the zoo's ``enjoy`` imports for its hub loader without declaring it). A missing module gives
a message and exit status 2, not a traceback.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

__all__ = [
    "ALGO_NAME",
    "COMMANDS",
    "DEFAULT_THREADS",
    "DEFAULT_ZOO_CONFIG",
    "convert_hybrid_pg_params",
    "main",
    "register",
    "sample_hybrid_pg_params",
    "zoo_argv",
]

ALGO_NAME = "hybrid_pg"
COMMANDS = ("train", "enjoy")
INSTALL_HINT = 'the RL Zoo is not installed: pip install "hybrid-pg[zoo]" (or pip install rl_zoo3)'
#: the packaged hyperparameters, used by ``train`` when no ``-conf`` is given
DEFAULT_ZOO_CONFIG = Path(__file__).resolve().parent / "configs" / "zoo" / "hybrid_pg.yml"
#: torch threads unless ``--num-threads`` is given (see the module docstring)
DEFAULT_THREADS = 1

#: network sizes the sampler chooses from; the advantage head A_phi(s, a) gets the same hidden sizes
NET_ARCHS: Dict[str, List[int]] = {"tiny": [64], "small": [64, 64], "medium": [256, 256]}
ACTIVATIONS = ("tanh", "relu")


# ------------------------------------------------------------------------------------------------
# Optuna: sampler and converter
# ------------------------------------------------------------------------------------------------


def convert_hybrid_pg_params(sampled: Dict[str, Any]) -> Dict[str, Any]:
    """A trial's raw parameters (as sampled / stored by Optuna) -> HybridPG keyword arguments.

    Raw names that are not HybridPG keywords: ``n_steps_pow`` / ``batch_size_pow`` (powers of 2),
    ``one_minus_gamma`` / ``one_minus_gae_lambda``, ``net_arch`` (a key of :data:`NET_ARCHS`) and
    ``activation_fn`` (``"tanh"`` / ``"relu"``); everything else is passed through.
    """
    from torch import nn

    params = dict(sampled)
    out: Dict[str, Any] = {}
    if "n_steps_pow" in params:
        out["n_steps"] = 2 ** int(params.pop("n_steps_pow"))
    if "batch_size_pow" in params:
        out["batch_size"] = 2 ** int(params.pop("batch_size_pow"))
    if "one_minus_gamma" in params:
        out["gamma"] = 1.0 - float(params.pop("one_minus_gamma"))
    if "one_minus_gae_lambda" in params:
        out["gae_lambda"] = 1.0 - float(params.pop("one_minus_gae_lambda"))
    policy_kwargs: Dict[str, Any] = {}
    if "net_arch" in params:
        hidden = NET_ARCHS[params.pop("net_arch")]
        policy_kwargs.update(net_arch=dict(pi=list(hidden), vf=list(hidden)), advantage_net_arch=list(hidden))
    if "activation_fn" in params:
        policy_kwargs["activation_fn"] = {"tanh": nn.Tanh, "relu": nn.ReLU}[params.pop("activation_fn")]
    if policy_kwargs:
        out["policy_kwargs"] = policy_kwargs
    out.update(params)
    return out


def sample_hybrid_pg_params(trial: Any, n_actions: int, n_envs: int, additional_args: Dict[str, Any]) -> Dict[str, Any]:
    """Optuna sampler for HybridPG (the zoo's sampler signature).

    PPO-style parameters (rollout and minibatch sizes, discounting, learning rate, clipping,
    epochs, gradient norm, network) plus HybridPG's lam window length and bias correction. The
    estimator itself is not tuned: it is what a study compares. The minibatch is capped at the
    rollout size (``n_steps * n_envs``).
    """
    sampled = {
        "n_steps_pow": trial.suggest_int("n_steps_pow", 5, 12),
        "batch_size_pow": trial.suggest_int("batch_size_pow", 5, 10),
        "one_minus_gamma": trial.suggest_float("one_minus_gamma", 1e-4, 0.2, log=True),
        "one_minus_gae_lambda": trial.suggest_float("one_minus_gae_lambda", 1e-3, 0.2, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 3e-3, log=True),
        "clip_range": trial.suggest_categorical("clip_range", [0.1, 0.2, 0.3]),
        "n_epochs": trial.suggest_categorical("n_epochs", [1, 5, 10, 20]),
        "max_grad_norm": trial.suggest_float("max_grad_norm", 0.3, 2.0),
        "net_arch": trial.suggest_categorical("net_arch", list(NET_ARCHS)),
        "activation_fn": trial.suggest_categorical("activation_fn", list(ACTIVATIONS)),
        "lambda_window": trial.suggest_categorical("lambda_window", [4, 8, 16]),
        "bias_correction": trial.suggest_categorical("bias_correction", [True, False]),
    }
    params = convert_hybrid_pg_params(sampled)
    params["batch_size"] = min(params["batch_size"], params["n_steps"] * max(1, n_envs))
    for name in ("n_steps", "batch_size", "gamma"):
        trial.set_user_attr(name, params[name])  # the zoo shows these next to the raw values
    return params


# ------------------------------------------------------------------------------------------------
# registration and dispatch
# ------------------------------------------------------------------------------------------------


def register() -> None:
    """Make the installed ``rl_zoo3`` know ``hybrid_pg`` (idempotent); ImportError if it is missing."""
    try:
        import rl_zoo3
        import rl_zoo3.hyperparams_opt as hyperparams_opt
        import rl_zoo3.utils as zoo_utils
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from exc

    from hybrid_pg import HybridPG
    from hybrid_pg.experiments.config import import_env_plugins

    import_env_plugins()
    # rl_zoo3.ALGOS is rl_zoo3.utils.ALGOS: the one table train, enjoy and the experiment manager read
    zoo_utils.ALGOS[ALGO_NAME] = HybridPG
    if getattr(rl_zoo3, "ALGOS", None) is not zoo_utils.ALGOS:  # pragma: no cover - other layouts
        rl_zoo3.ALGOS[ALGO_NAME] = HybridPG
    hyperparams_opt.HYPERPARAMS_SAMPLER[ALGO_NAME] = sample_hybrid_pg_params
    converters = getattr(hyperparams_opt, "HYPERPARAMS_CONVERTER", None)
    if converters is not None:
        converters[ALGO_NAME] = convert_hybrid_pg_params


@contextlib.contextmanager
def _argv(argv: List[str]) -> Iterator[None]:
    """The zoo's scripts parse ``sys.argv``: set it for the call, then restore it."""
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


def _entry_point(command: str) -> Callable[[], Any]:
    if command == "train":
        from rl_zoo3.train import train

        return train
    from rl_zoo3.enjoy import enjoy

    return enjoy


def _has_option(args: Sequence[str], *names: str) -> bool:
    return any(a in names or any(a.startswith(f"{n}=") for n in names) for a in args)


def zoo_argv(command: str, rest: Sequence[str]) -> List[str]:
    """The zoo's arguments: ``rest`` plus this wrapper's defaults (module docstring) where absent."""
    args = list(rest)
    if not _has_option(args, "--num-threads"):
        args += ["--num-threads", str(DEFAULT_THREADS)]
    if command == "train" and not _has_option(args, "-conf", "--conf-file"):
        args += ["-conf", str(DEFAULT_ZOO_CONFIG)]
    return args


def _usage() -> str:
    return (
        f"usage: python -m hybrid_pg.experiments.zoo {{{','.join(COMMANDS)}}} [rl_zoo3 options ...]\n"
        f"  e.g. python -m hybrid_pg.experiments.zoo train --algo {ALGO_NAME} --env Pendulum-v1\n"
        f"  defaults added when absent: --num-threads {DEFAULT_THREADS}; train: -conf {DEFAULT_ZOO_CONFIG}\n"
        "  (python -m hybrid_pg.experiments.zoo train --help lists the zoo's options)"
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Register HybridPG with the zoo and run its ``train`` or ``enjoy`` with the remaining arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(
            f"python -m hybrid_pg.experiments.zoo: error: unknown command {command!r} (choose from {', '.join(COMMANDS)})\n{_usage()}",
            file=sys.stderr,
        )
        return 2
    try:
        register()
        entry = _entry_point(command)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        hint = f" (rl_zoo3's {command} imports {missing!r}; it is part of the zoo extra)" if missing and missing != "rl_zoo3" else ""
        fix = "" if "pip install" in str(exc) else ': pip install "hybrid-pg[zoo]"'
        print(f"python -m hybrid_pg.experiments.zoo: error: {exc}{hint}{fix}", file=sys.stderr)
        return 2
    with _argv([f"python -m hybrid_pg.experiments.zoo {command}", *zoo_argv(command, rest)]):
        entry()
    return 0


if __name__ == "__main__":
    sys.exit(main())
