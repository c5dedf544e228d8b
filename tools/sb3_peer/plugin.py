"""pytest plugin: run Stable-Baselines3's own tests with HybridPG in A2C's place.

Loaded by ``run_peer_suite.py`` as ``-p sb3_peer.plugin`` (``tools/`` on ``PYTHONPATH``) on the
``tests/`` folder of SB3's source distribution. It does three things:

1. **Substitution.** Before any test module is imported, ``stable_baselines3.A2C`` (and
   ``stable_baselines3.a2c.A2C``) is replaced by :class:`HybridPG_as_A2C`, a thin subclass of
   :class:`hybrid_pg.HybridPG`. SB3's tests do ``from stable_baselines3 import A2C`` and
   parametrise ``model_class`` with that name, and their bodies compare ``model_class == A2C`` /
   ``model_class in {A2C, PPO}``: since every one of those names is bound to the substitute, the
   parametrisation, the branches and the direct ``A2C(...)`` calls all consistently get HybridPG.
   Test ids read ``[HybridPG_as_A2C]`` (pytest names a class parameter by its ``__name__``).
2. **Selection.** An item is *about A2C* when one of its parameters is the substitute, or, for
   items parametrised by no algorithm class, when its code (the test function, its fixtures and the
   same-module functions they call) refers to the name ``A2C``. Items not about A2C test SB3
   itself, not HybridPG, and are deselected with one shared reason.
3. **Deselection rules.** :data:`RULES`, a list of ``(pattern, reason)`` pairs, deselects the
   A2C items whose setting HybridPG does not support (Discrete / MultiDiscrete / MultiBinary
   action spaces, gSDE, A2C internals). A pattern is the node id relative to ``tests/``
   (``test_file.py::test_name[param-ids]``) in which ``*`` matches any run of characters (nothing
   else is special: brackets are literal). The first matching rule wins, and rules are checked
   before the "not about A2C" default, so a rule also gives the precise reason for an A2C item the
   automatic check cannot see. Rules whose reason starts with ``"BUG:"`` are temporary: a HybridPG
   bug, to be fixed and the rule removed.

4. **Adaptations.** :data:`ADAPTATIONS` runs the tests that are Discrete only through the env they
   build (a flag, a CartPole-v1 id, a custom ``ActorCriticPolicy``) and the PPO-only tests that
   apply to HybridPG, by replacing globals of the test's module for that test only (an autouse
   fixture with ``monkeypatch``): nothing of SB3's tests is copied.
5. **Update shapes.** ``--peer-shape a2c|ppo`` (:data:`UPDATE_SHAPES`): HybridPG's update in A2C's
   shape (one full-batch step) or in its default PPO-like shape (minibatch epochs, clipping, the
   pathwise KL limit); :data:`SHAPE_RULES` holds the rules of one shape only.

Every deselection is reported with its reason at the end of the run (``--peer-list-deselected``
also lists the items not about A2C one by one), and ``--peer-report FILE`` writes the counts and
the lists as JSON (the runner prints its summary from it).
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import os
import re
import sys
import types
from collections import Counter, defaultdict
from typing import Any, Callable, ClassVar, Dict, Iterable, List, NamedTuple, Optional, Set, Tuple

import pytest
import stable_baselines3
import stable_baselines3.a2c
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from hybrid_pg import HybridPG
from hybrid_pg.policies import HybridActorCriticPolicy

ORIGINAL_A2C = stable_baselines3.A2C
ORIGINAL_PPO = stable_baselines3.PPO

# ------------------------------------------------------------------------------------------------
# the rules (audit here)
# ------------------------------------------------------------------------------------------------

_SUB = "HybridPG_as_A2C"  # the substitute's name, as it appears in test ids
_DISCRETE = "Discrete action space ({}): HybridPG trains Gaussian policies on Box actions only"
_GSDE = "gSDE (use_sde=True{}): HybridPG needs the per-step Gaussian noise eps of the pathwise term"

#: (pattern on the node id relative to tests/, reason). First match wins. Written for
#: stable-baselines3 2.9.2; a rule that matches nothing is reported at the end of the run.
RULES: List[Tuple[str, str]] = [
    # -- temporary: HybridPG bugs (remove the rule with the fix) -----------------------------
    # -- Discrete / MultiDiscrete / MultiBinary action spaces ----------------------------------
    ("test_callbacks.py::test_eval_callback_vec_env", _DISCRETE.format("IdentityEnv, made by the test itself")),
    ("test_callbacks.py::test_eval_friendly_error", _DISCRETE.format("CartPole-v1, made by the test itself with gym.make")),
    (f"test_identity.py::test_discrete[env0-{_SUB}]", _DISCRETE.format("IdentityEnv")),
    (f"test_identity.py::test_discrete[env1-{_SUB}]", "MultiDiscrete action space (IdentityEnvMultiDiscrete): Box actions only"),
    (f"test_identity.py::test_discrete[env2-{_SUB}]", "MultiBinary action space (IdentityEnvMultiBinary): Box actions only"),
    (f"test_logger.py::test_fps_logger[{_SUB}]", _DISCRETE.format("TimeDelayEnv, defined by the test with a Discrete action space")),
    (f"test_predict.py::test_predict[*-CartPole-v1-{_SUB}]", _DISCRETE.format("CartPole-v1; the Pendulum-v1 case of the same test runs")),
    ("test_run.py::test_a2c[CartPole-v1]", _DISCRETE.format("CartPole-v1; the Pendulum-v1 case of the same test runs")),
    (
        f"test_spaces.py::test_action_spaces[CartPole-v1-{_SUB}]",
        _DISCRETE.format("CartPole-v1; the Pendulum-v1 case of the same test runs"),
    ),
    (f"test_spaces.py::test_discrete_obs_space[Taxi-v3-{_SUB}]", _DISCRETE.format("Taxi-v3")),
    (
        "test_spaces.py::test_multidim_binary_not_supported",
        "MultiBinary action space: asserts A2C's own AssertionError for 2-D MultiBinary; HybridPG rejects "
        "every non-Box action space with a ValueError instead",
    ),
    (f"test_train_eval_mode.py::*[CartPole-v1-{_SUB}]", _DISCRETE.format("CartPole-v1; the Pendulum-v1 case of the same test runs")),
    (
        "test_utils.py::test_evaluate_policy_monitors[*]",
        _DISCRETE.format("CartPole-v1, also made by the test itself with gym.make")
        + "; and it asserts a positive mean episode reward, which Pendulum-v1's (negative) rewards are not",
    ),
    # -- gSDE ----------------------------------------------------------------------------------
    (f"test_distributions.py::test_squashed_gaussian[{_SUB}]", _GSDE.format(", squash_output=True")),
    (f"test_save_load.py::test_save_load_policy[True-*-{_SUB}]", _GSDE.format("")),
    (f"test_sde.py::test_state_dependent_noise[*-{_SUB}]", _GSDE.format("")),
    # -- A2C's own defaults ------------------------------------------------------------------------
    (
        "test_tensorboard.py::test_tensorboard[a2c]",
        "asserts A2C's default tb_log_name (a log folder A2C_1); HybridPG's default is 'HybridPG' "
        "(CartPole-v1 besides; TensorBoard logging itself runs in test_logger.py::test_set_logger)",
    ),
    # -- names A2C, but is not about it ---------------------------------------------------------
    (
        "test_logger.py::test_sb3_import_without_optional_deps",
        "not about A2C: re-imports SB3 with pandas/matplotlib hidden (A2C appears only in an import)",
    ),
]

#: rules for one update shape only (``--peer-shape``), checked after :data:`RULES`
SHAPE_RULES: Dict[str, List[Tuple[str, str]]] = {
    "ppo": [
        (
            f"test_gae.py::test_infinite_horizon[True-{_SUB}]",
            "tolerance calibrated for A2C's update (one gradient step per 5-step rollout): with 10 epochs "
            "per rollout at lr=0.01, SB3's own PPO also ends outside it (V(s0) = 48.2, 48.7, 48.2 for the "
            "true 50 +/- 1 on seeds 1-3; HybridPG: 47.6, 46.8, 48.1); it passes in the a2c shape",
        ),
    ],
}

#: the reason of every item not about A2C; a rule whose reason starts with "not about A2C"
#: classifies an item the automatic check would count as about A2C
NOT_ABOUT_A2C = "not about A2C (tests SB3 itself, not HybridPG)"

# ------------------------------------------------------------------------------------------------
# the substitutes and the update shapes
# ------------------------------------------------------------------------------------------------


class _HalfRollout:
    """``batch_size`` of the PPO shape: half of ``n_steps * n_envs`` when that is even and at least
    4 (two minibatches that divide the rollout, so no truncated-minibatch warning), else the whole
    rollout (``None``). Resolved per model in :meth:`_Substitute.__init__`."""

    def __repr__(self) -> str:
        return "half-the-rollout"


HALF_ROLLOUT = _HalfRollout()
_HYBRID_DEFAULTS = {n: p.default for n, p in inspect.signature(HybridPG.__init__).parameters.items()}

#: HybridPG's update in two shapes (``--peer-shape``). ``a2c``: one full-batch gradient step per
#: rollout of the plain likelihood-ratio surrogate, whose gradient at lam = 0 is exactly A2C's
#: policy gradient (HybridPG adds its advantage head's regression loss). ``ppo``: HybridPG's default
#: path: n_epochs epochs of minibatches, PPO's ratio clipping, and with it the pathwise KL limit
#: (``pathwise_kl_limit="auto"`` is clip_range^2 / 2 once clip_range is set).
UPDATE_SHAPES: Dict[str, Dict[str, Any]] = {
    "a2c": dict(batch_size=None, n_epochs=1, clip_range=None),
    "ppo": dict(
        batch_size=HALF_ROLLOUT,
        n_epochs=_HYBRID_DEFAULTS["n_epochs"],
        clip_range=_HYBRID_DEFAULTS["clip_range"],
        pathwise_kl_limit=_HYBRID_DEFAULTS["pathwise_kl_limit"],
    ),
}
A2C_UPDATE_SHAPE = UPDATE_SHAPES["a2c"]


def sb3_defaults(algorithm: type) -> Dict[str, Any]:
    """``algorithm``'s default for every keyword HybridPG shares with it (read from its signature)."""
    ours = inspect.signature(HybridPG.__init__).parameters
    return {
        name: p.default
        for name, p in inspect.signature(algorithm.__init__).parameters.items()
        if name in ours and p.default is not inspect.Parameter.empty and not name.startswith("_")
    }


def a2c_defaults() -> Dict[str, Any]:
    return sb3_defaults(ORIGINAL_A2C)


class _Substitute(HybridPG):
    """HybridPG standing in for an SB3 algorithm (:attr:`original`): its defaults, its positional order."""

    original: ClassVar[type]
    peer_defaults: ClassVar[Dict[str, Any]]
    #: env ids this test asks for -> the Box env id built instead (set per test by an adaptation)
    env_ids: ClassVar[Dict[str, str]] = {}

    def __init__(self, policy: Any, env: Any, *args: Any, **kwargs: Any) -> None:
        if args:
            names = list(inspect.signature(self.original.__init__).parameters)[3:]
            if len(args) > len(names):
                raise TypeError(f"too many positional arguments for {self.original.__name__}: {args}")
            for name, value in zip(names, args):
                if name in kwargs:
                    raise TypeError(f"got multiple values for argument {name!r}")
                kwargs[name] = value
        if isinstance(env, str):
            env = self.env_ids.get(env, env)
        kwargs = {**self.peer_defaults, **kwargs}
        if kwargs.get("batch_size") is HALF_ROLLOUT:
            rollout = kwargs["n_steps"] * (env.num_envs if isinstance(env, VecEnv) else 1)
            kwargs["batch_size"] = rollout // 2 if rollout % 2 == 0 and rollout >= 4 else None
        super().__init__(policy, env, **kwargs)


class HybridPG_as_A2C(_Substitute):  # noqa: N801 (the name is the test id)
    """HybridPG with A2C's defaults, standing in for ``stable_baselines3.A2C`` in SB3's tests.

    SB3's tests size their budgets and expectations for A2C's defaults (``n_steps=5``, RMSprop,
    ``gae_lambda=1``, ...), so the shared hyperparameters default to A2C's; the update has the shape
    chosen by ``--peer-shape`` (:data:`UPDATE_SHAPES`, A2C's by default); HybridPG's own parameters
    (``estimator="hybrid"``, the adaptive weight, its window and warm-up) keep HybridPG's defaults
    unless ``--hybrid-kwargs`` overrides them. Explicit arguments of a test always win. Positional
    arguments after ``env`` are taken in A2C's order.
    """

    original = ORIGINAL_A2C
    peer_defaults = {**a2c_defaults(), **A2C_UPDATE_SHAPE}


class HybridPG_as_PPO(_Substitute):  # noqa: N801
    """HybridPG with PPO's defaults, standing in for ``PPO`` in the few PPO-only tests that
    :data:`ADAPTATIONS` selects (never bound globally: only in those tests' modules)."""

    original = ORIGINAL_PPO
    peer_defaults = sb3_defaults(ORIGINAL_PPO)


# ------------------------------------------------------------------------------------------------
# adaptations: SB3 tests that apply to Box actions once their env (or policy, or algorithm) is set
# ------------------------------------------------------------------------------------------------


def _forcing(**overrides: Any) -> Callable[[type], type]:
    """A subclass of an env class whose constructor always gets ``overrides`` (e.g. ``discrete=False``)."""

    def make(cls: type) -> type:
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            cls.__init__(self, *args, **{**kwargs, **overrides})

        return type(cls.__name__, (cls,), {"__init__": __init__, "__qualname__": cls.__qualname__})

    return make


def _on_hybrid_policy(cls: type) -> type:
    """The test's own ActorCriticPolicy subclass, rebuilt on HybridPG's policy class (its overrides
    kept, the advantage head added): ``class X(CustomPolicy, HybridActorCriticPolicy)``."""
    return type(cls.__name__, (cls, HybridActorCriticPolicy), {"__qualname__": cls.__qualname__})


def _box_env_ids(make_vec_env: Callable[..., Any]) -> Callable[..., Any]:
    """The test module's ``make_vec_env``, building the Box env id for a CartPole-v1 request."""

    def make(env_id: Any, *args: Any, **kwargs: Any) -> Any:
        return make_vec_env(_BOX.get(env_id, env_id) if isinstance(env_id, str) else env_id, *args, **kwargs)

    return make


def _as_ppo(_original: type) -> type:
    return HybridPG_as_PPO


class Adaptation(NamedTuple):
    """For the items matching ``pattern``: each test-module global in ``patch`` is replaced, for that
    test only, by ``patch[name](original)``, and the substitutes build ``env_ids[id]`` when the test
    asks for env id ``id``. A matching item is selected (about HybridPG) unless a rule deselects it."""

    pattern: str
    why: str
    patch: Dict[str, Callable[[Any], Any]] = {}
    env_ids: Dict[str, str] = {}
    xfail: Optional[str] = None  # strict xfail with this reason


_BOX = {"CartPole-v1": "Pendulum-v1"}
_PPO_ONLY = "PPO-only test of the algorithm class (save/load, schedules, warnings): run with HybridPG_as_PPO"

#: First match wins. The twelve Discrete-through-a-branch tests, the CartPole-only ones, GAE with its
#: custom policy, and the PPO-only tests that apply to HybridPG.
ADAPTATIONS: List[Adaptation] = [
    # -- Discrete only through a `model_class not in {SAC, TD3}` branch or a flag ---------------
    Adaptation(f"test_cnn.py::test_cnn[*-{_SUB}]", "FakeImageEnv(discrete=False)", {"FakeImageEnv": _forcing(discrete=False)}),
    Adaptation(f"test_cnn.py::test_vec_transpose_skip[{_SUB}]", "FakeImageEnv(discrete=False)", {"FakeImageEnv": _forcing(discrete=False)}),
    Adaptation("test_cnn.py::test_channel_first_env", "FakeImageEnv(discrete=False)", {"FakeImageEnv": _forcing(discrete=False)}),
    Adaptation(f"test_cnn.py::test_image_like_input[*-{_SUB}]", "FakeImageEnv(discrete=False)", {"FakeImageEnv": _forcing(discrete=False)}),
    Adaptation(
        f"test_dict_env.py::test_goal_env[{_SUB}]", "BitFlippingEnv(continuous=True)", {"BitFlippingEnv": _forcing(continuous=True)}
    ),
    Adaptation(
        f"test_dict_env.py::test_dict_spaces[*-{_SUB}]",
        "DummyDictEnv(use_discrete_actions=False)",
        {"DummyDictEnv": _forcing(use_discrete_actions=False)},
    ),
    Adaptation(
        f"test_dict_env.py::test_multiprocessing[{_SUB}]",
        "DummyDictEnv(use_discrete_actions=False)",
        {"DummyDictEnv": _forcing(use_discrete_actions=False)},
    ),
    Adaptation(
        f"test_dict_env.py::test_dict_vec_framestack[*-{_SUB}]",
        "SimpleMultiObsEnv(discrete_actions=False)",
        {"SimpleMultiObsEnv": _forcing(discrete_actions=False)},
    ),
    # -- CartPole only by the env id the test passes to the algorithm ----------------------------
    Adaptation(f"test_custom_policy.py::test_flexible_mlp[{_SUB}-*]", "Pendulum-v1 for CartPole-v1", env_ids=_BOX),
    Adaptation(f"test_run.py::test_advantage_normalization[*-{_SUB}]", "Pendulum-v1 for CartPole-v1", env_ids=_BOX),
    Adaptation("test_logger.py::test_set_logger", "Pendulum-v1 for CartPole-v1", env_ids=_BOX),
    Adaptation(f"test_logger.py::test_fps_no_div_zero[{_SUB}]", "Pendulum-v1 for CartPole-v1", env_ids=_BOX),
    Adaptation(f"test_logger.py::test_ep_buffers_stats_window_size[*-{_SUB}]", "Pendulum-v1 for CartPole-v1", env_ids=_BOX),
    Adaptation(
        "test_utils.py::test_evaluate_vector_env[*]",
        "Pendulum-v1 for CartPole-v1",
        {"make_vec_env": _box_env_ids},
        env_ids=_BOX,
    ),
    # -- a custom ActorCriticPolicy ------------------------------------------------------------
    Adaptation(
        f"test_gae.py::test_gae_computation[*-{_SUB}]",
        "CustomPolicy (constant values) rebuilt on HybridActorCriticPolicy",
        {"CustomPolicy": _on_hybrid_policy},
    ),
    # -- PPO-only tests (the PPO name in the test's module is HybridPG_as_PPO for that test) -----
    *(
        Adaptation(f"test_save_load.py::{name}", _PPO_ONLY, {"PPO": _as_ppo}, env_ids=_BOX)
        for name in (
            "test_save_load_backward_compatible[PPO]",
            "test_save_load_clip_range_portable[PPO]",
            "test_cast_lr_schedule",
            "test_load_invalid_object",
            "test_no_resource_warning",
            "test_load_bad_zip",
            "test_save_load_net_arch_none",
        )
    ),
    Adaptation(
        "test_run.py::test_ppo_warnings",
        _PPO_ONLY,
        {"PPO": _as_ppo},
        xfail="three of its four checks are PPO's, not HybridPG's: (1) PPO(n_steps=1) must raise PPO's "
        "AssertionError (advantage normalization of one sample is NaN), but HybridPG skips normalizing a "
        "one-sample rollout, by design; (2) it reads logger key train/loss, PPO's total loss, which HybridPG "
        "does not log (it logs train/policy_loss, value_loss, q_loss); (3) it expects SB3's CPU recommendation, "
        "which SB3 gives only for ActorCriticPolicy (HybridPG's is HybridActorCriticPolicy) and words with the "
        "class name. The fourth, the truncated-minibatch warning, is HybridPG's too (same text; tested in "
        "tests/test_sb3_parity.py::test_truncated_minibatch_warning_like_ppo)",
    ),
]


def adaptation_for(nodeid: str) -> Optional[Adaptation]:
    return next((a for a in ADAPTATIONS if pattern_matches(a.pattern, nodeid)), None)


@pytest.fixture(autouse=True)
def _sb3_peer_adapt(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Apply the item's :class:`Adaptation` for the duration of the test (monkeypatch undoes it)."""
    adaptation = adaptation_for(relative_nodeid(request.node))
    if adaptation is None:
        return
    for name, make in adaptation.patch.items():
        monkeypatch.setattr(request.module, name, make(getattr(request.module, name)))
    if adaptation.env_ids:
        monkeypatch.setattr(_Substitute, "env_ids", {**_Substitute.env_ids, **adaptation.env_ids})


# ------------------------------------------------------------------------------------------------
# pytest hooks
# ------------------------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sb3-peer", "SB3 peer suite (HybridPG in A2C's place)")
    group.addoption("--peer-list-deselected", action="store_true", help="list every deselected item, also those not about A2C")
    group.addoption("--peer-report", metavar="FILE", help="write the counts and the deselection lists as JSON")
    group.addoption("--peer-no-rules", action="store_true", help="ignore RULES: run every A2C item (to audit the rules)")
    group.addoption(
        "--peer-shape",
        choices=sorted(UPDATE_SHAPES),
        default="a2c",
        help="HybridPG's update shape in A2C's place: a2c (one full-batch step) or ppo (minibatch epochs, clipping, KL limit)",
    )
    group.addoption(
        "--hybrid-kwargs",
        metavar="JSON",
        default=None,
        help='extra HybridPG defaults for the substitute, e.g. \'{"estimator": "pathwise"}\'',
    )


class _State:
    def __init__(self) -> None:
        self.deselected: List[Tuple[str, str, bool]] = []  # (nodeid, reason, about_a2c)
        self.selected: List[str] = []
        self.rule_hits: Counter = Counter()
        self.ours: Set[int] = set()  # ids of the items this plugin deselected
        self.other_deselected = 0  # deselected by -k / -m
        self.not_collected: List[Tuple[str, str, bool]] = []  # (file, reason, mentions A2C)
        self.outcomes: Counter = Counter()
        self.failed: List[str] = []
        self.audit: Dict[str, str] = {}  # --peer-no-rules: nodeid -> the reason a rule would give
        self.audit_outcome: Dict[str, str] = {}  # nodeid -> outcome and error of the run
        self.adapted: List[Tuple[str, str]] = []  # (nodeid, how) of the items an Adaptation matched


_STATE = _State()
_PATCHED: List[Tuple[types.ModuleType, str, Any]] = []


def pytest_configure(config: pytest.Config) -> None:
    extra = json.loads(config.getoption("--hybrid-kwargs") or "{}")
    shape = UPDATE_SHAPES[config.getoption("--peer-shape")]
    HybridPG_as_A2C.peer_defaults = {**a2c_defaults(), **shape, **extra}
    HybridPG_as_PPO.peer_defaults = {**sb3_defaults(ORIGINAL_PPO), **extra}
    for module in (stable_baselines3, stable_baselines3.a2c):
        _PATCHED.append((module, "A2C", module.A2C))
        module.A2C = HybridPG_as_A2C  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    while _PATCHED:
        module, name, value = _PATCHED.pop()
        setattr(module, name, value)


def pytest_report_header(config: pytest.Config) -> List[str]:
    defaults = ", ".join(f"{k}={v!r}" for k, v in sorted(HybridPG_as_A2C.peer_defaults.items()))
    return [
        f"sb3-peer: stable-baselines3 {stable_baselines3.__version__} from {os.path.dirname(stable_baselines3.__file__)}",
        f"sb3-peer: A2C -> HybridPG_as_A2C (hybrid_pg from {os.path.dirname(sys.modules['hybrid_pg'].__file__)})",
        f"sb3-peer: update shape {config.getoption('--peer-shape')!r}; substitute defaults: {defaults}",
    ]


def pytest_ignore_collect(collection_path: Any, config: pytest.Config) -> Optional[bool]:
    """Skip a test module whose top-level imports name a package that is not installed (SB3's
    tests import e.g. pandas and ale_py at module level); the run reports it as not collected."""
    path = str(collection_path)
    if not (path.endswith(".py") and os.path.basename(path).startswith("test_")):
        return None
    folder = os.path.dirname(path)
    missing = sorted(
        m
        for m in _top_level_imports(path)
        if importlib.util.find_spec(m) is None
        and not os.path.exists(os.path.join(folder, m + ".py"))  # a sibling helper module
        and not os.path.isdir(os.path.join(folder, m))
    )
    if not missing:
        return None
    with open(path, encoding="utf-8") as fh:
        mentions_a2c = "A2C" in fh.read()
    _STATE.not_collected.append((os.path.basename(path), f"needs {', '.join(missing)} (not installed)", mentions_a2c))
    return True


def _top_level_imports(path: str) -> Set[str]:
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), filename=path)
    names: Set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: List[pytest.Item]) -> None:
    use_rules = not config.getoption("--peer-no-rules")
    keep: List[pytest.Item] = []
    dropped: List[pytest.Item] = []
    for item in items:
        nodeid = relative_nodeid(item)
        reason = None
        adaptation = adaptation_for(nodeid)
        if adaptation is not None:
            _adapt_at_collection(item, adaptation)
        about = involves_a2c(item) or adaptation is not None
        for pattern, why in active_rules(config):
            if pattern_matches(pattern, nodeid):
                _STATE.rule_hits[pattern] += 1
                about = not why.startswith("not about A2C")
                if use_rules:
                    reason = why
                else:
                    _STATE.audit[item.nodeid] = why
                break
        if reason is None and not about:
            reason = NOT_ABOUT_A2C
        if reason is None:
            keep.append(item)
        else:
            dropped.append(item)
            _STATE.deselected.append((nodeid, reason, about))
    if dropped:
        _STATE.ours.update(id(item) for item in dropped)
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep


def active_rules(config: pytest.Config) -> List[Tuple[str, str]]:
    return RULES + SHAPE_RULES.get(config.getoption("--peer-shape"), [])


def _adapt_at_collection(item: pytest.Item, adaptation: Adaptation) -> None:
    """A parametrised algorithm class the adaptation replaces (``model_class=PPO``) is replaced in
    the item's parameters too (the id keeps the original name, e.g. ``[PPO]``); and its xfail."""
    callspec = getattr(item, "callspec", None)
    module = getattr(item, "module", None)
    for name, make in adaptation.patch.items():
        original = getattr(module, name, None)
        for key, value in list(getattr(callspec, "params", {}).items()):
            if isinstance(value, type) and value is original:
                callspec.params[key] = make(original)
    if adaptation.xfail:
        item.add_marker(pytest.mark.xfail(strict=True, reason=adaptation.xfail))
    _STATE.adapted.append((relative_nodeid(item), adaptation.why))


def pytest_deselected(items: List[pytest.Item]) -> None:
    """Count what other plugins deselect (``-k``, ``-m``) so the report adds up."""
    _STATE.other_deselected += sum(1 for item in items if id(item) not in _STATE.ours)


def pytest_collection_finish(session: pytest.Session) -> None:
    _STATE.selected = [relative_nodeid(item) for item in session.items]
    final = {item.nodeid for item in session.items}
    _STATE.audit = {nodeid: why for nodeid, why in _STATE.audit.items() if nodeid in final}


def pattern_matches(pattern: str, nodeid: str) -> bool:
    """``*`` matches any run of characters; everything else (brackets included) is literal."""
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, nodeid) is not None


def relative_nodeid(item: pytest.Item) -> str:
    """``test_file.py::name[ids]`` whatever the rootdir."""
    return relative_nodeid_str(item.nodeid)


def relative_nodeid_str(nodeid: str) -> str:
    path, sep, rest = nodeid.partition("::")
    return os.path.basename(path) + sep + rest


# -- is an item about A2C? ---------------------------------------------------------------------


def _algorithm_params(item: pytest.Item) -> List[type]:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return []
    found = []
    for value in callspec.params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, type) and issubclass(v, BaseAlgorithm):
                found.append(v)
    return found


def involves_a2c(item: pytest.Item) -> bool:
    algos = _algorithm_params(item)
    if algos:
        return any(issubclass(a, _Substitute) for a in algos)
    functions = [getattr(item, "function", None)]
    fixtureinfo = getattr(item, "_fixtureinfo", None)
    for defs in getattr(fixtureinfo, "name2fixturedefs", {}).values():
        functions.extend(getattr(d, "func", None) for d in defs)
    return "A2C" in _global_names(f for f in functions if f is not None)


def _global_names(functions: Iterable[Any]) -> Set[str]:
    """Global names the functions refer to, following same-module functions they call."""
    names: Set[str] = set()
    seen: Set[int] = set()
    todo = list(functions)
    while todo:
        fn = inspect.unwrap(todo.pop())
        code = getattr(fn, "__code__", None)
        if code is None or id(code) in seen:
            continue
        seen.add(id(code))
        module_globals = getattr(fn, "__globals__", {})
        for name in _code_names(code):
            names.add(name)
            target = module_globals.get(name)
            if inspect.isfunction(target) and target.__module__ == fn.__module__:
                todo.append(target)
    return names


def _code_names(code: types.CodeType) -> Set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


# -- outcomes and the report -------------------------------------------------------------------


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid in _STATE.audit and (report.when == "call" or report.failed or report.skipped):
        crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
        message = crash.message.splitlines()[0] if crash is not None and crash.message else ""
        _STATE.audit_outcome.setdefault(report.nodeid, f"{report.outcome} {message}".strip())
    if report.when == "call":
        outcome = "xfailed" if hasattr(report, "wasxfail") and report.skipped else report.outcome
        _STATE.outcomes[outcome] += 1
        if report.failed:
            _STATE.failed.append(report.nodeid)
    elif report.failed:  # setup/teardown error
        _STATE.outcomes["error"] += 1
        _STATE.failed.append(report.nodeid)
    elif report.when == "setup" and report.skipped:
        _STATE.outcomes["skipped"] += 1


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    tr = terminalreporter
    tr.section(f"sb3-peer: HybridPG in A2C's place, {config.getoption('--peer-shape')} update shape")
    by_reason: Dict[str, List[str]] = defaultdict(list)  # deselected by a rule
    not_about: Dict[str, int] = Counter()  # the default: not about A2C, per file
    for nodeid, reason, _about in _STATE.deselected:
        if reason == NOT_ABOUT_A2C:
            not_about[nodeid.split("::")[0]] += 1
        else:
            by_reason[reason].append(nodeid)
    n_rule = sum(len(v) for v in by_reason.values())
    n_bug = sum(len(v) for r, v in by_reason.items() if r.startswith("BUG:"))
    others = f"; {_STATE.other_deselected} more by -k/-m" if _STATE.other_deselected else ""
    tr.write_line(
        f"collected {len(_STATE.selected) + len(_STATE.deselected) + _STATE.other_deselected}; "
        f"selected {len(_STATE.selected)}; deselected by this plugin {len(_STATE.deselected)} "
        f"({n_rule} by rule, {n_bug} of them BUG; {sum(not_about.values())} {NOT_ABOUT_A2C}){others}"
    )
    if by_reason:
        tr.write_line("")
        tr.write_line("deselected by rule, by reason:")
        for reason in sorted(by_reason, key=lambda r: (not r.startswith("BUG:"), r)):
            tr.write_line(f"  [{len(by_reason[reason])}] {reason}", red=reason.startswith("BUG:"))
            for nodeid in by_reason[reason]:
                tr.write_line(f"        {nodeid}")
    selected = set(_STATE.selected)
    adapted = [(n, how) for n, how in _STATE.adapted if n in selected]
    if adapted:
        tr.write_line("")
        tr.write_line(f"adapted to Box actions / HybridPG ({len(adapted)} selected items, see ADAPTATIONS):")
        for how in sorted({how for _, how in adapted}):
            tr.write_line(f"  [{sum(1 for _, h in adapted if h == how)}] {how}")
    tr.write_line("")
    tr.write_line(f"{NOT_ABOUT_A2C}, per file:")
    for path, count in sorted(not_about.items()):
        tr.write_line(f"  {count:4d}  {path}")
        if config.getoption("--peer-list-deselected"):
            for nodeid, reason, _about in _STATE.deselected:
                if reason == NOT_ABOUT_A2C and nodeid.split("::")[0] == path:
                    tr.write_line(f"        {nodeid}")
    for path, reason, mentions_a2c in _STATE.not_collected:
        tr.write_line(f"NOT COLLECTED {path}: {reason}" + ("; it has A2C tests" if mentions_a2c else ""), yellow=True)
    if _STATE.audit:
        tr.write_line("")
        tr.write_line("audit (--peer-no-rules): items a rule would deselect, the rule's reason and what happened:")
        for nodeid, reason in _STATE.audit.items():
            tr.write_line(f"  {relative_nodeid_str(nodeid)}")
            tr.write_line(f"      rule:   {reason}")
            tr.write_line(f"      result: {_STATE.audit_outcome.get(nodeid, 'not run')}")
    hit = {adaptation_for(n).pattern for n, _ in _STATE.adapted}  # type: ignore[union-attr]
    unused = [p for p, _ in active_rules(config) if _STATE.rule_hits[p] == 0] + [a.pattern for a in ADAPTATIONS if a.pattern not in hit]
    if unused:
        tr.write_line("")
        tr.write_line("rules and adaptations that matched no item (stale for this SB3 version?):", yellow=True)
        for pattern in unused:
            tr.write_line(f"  {pattern}", yellow=True)

    path = config.getoption("--peer-report")
    if path:
        data = dict(
            sb3_version=stable_baselines3.__version__,
            update_shape=config.getoption("--peer-shape"),
            adapted=[n for n, _ in adapted],
            substitute_defaults={k: repr(v) for k, v in HybridPG_as_A2C.peer_defaults.items()},
            selected=_STATE.selected,
            other_deselected=_STATE.other_deselected,
            deselected=[dict(nodeid=n, reason=r, about_a2c=a, by_rule=r != NOT_ABOUT_A2C) for n, r, a in _STATE.deselected],
            not_collected=[dict(file=f, reason=r, mentions_a2c=a) for f, r, a in _STATE.not_collected],
            unused_rules=unused,
            outcomes=dict(_STATE.outcomes),
            failed=_STATE.failed,
            exitstatus=int(exitstatus),
        )
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
