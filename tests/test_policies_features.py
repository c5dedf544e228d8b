"""Policies with separate actor / critic features extractors (``share_features_extractor=False``).

SB3's ``ActorCriticPolicy.extract_features`` ignores an explicit extractor when the extractor is not
shared and returns the ``(pi_features, vf_features)`` tuple instead; HybridPG's actor mean, its
advantage head and its per-sample statistics ask for one branch's features, so they must get that
branch's tensor (the first update used to crash with ``TypeError: linear(): ... not tuple``).
"""

import pytest
import torch as th
from stable_baselines3.common.envs import FakeImageEnv, SimpleMultiObsEnv

from hybrid_pg import HybridPG

POLICIES = {
    "MlpPolicy": lambda: "Pendulum-v1",
    "CnnPolicy": lambda: FakeImageEnv(screen_height=36, screen_width=36, n_channels=1, discrete=False),
    "MultiInputPolicy": lambda: SimpleMultiObsEnv(random_start=True, discrete_actions=False),
}


def _model(policy, **kwargs):
    policy_kwargs = dict(share_features_extractor=False)
    if policy != "MlpPolicy":
        policy_kwargs["features_extractor_kwargs"] = dict(features_dim=16) if policy == "CnnPolicy" else dict(cnn_output_dim=16)
    return HybridPG(policy, POLICIES[policy](), n_steps=16, batch_size=8, n_epochs=2, policy_kwargs=policy_kwargs, seed=0, **kwargs)


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("estimator", ["hybrid", "pathwise", "reinforce"])
def test_unshared_extractors_train(policy, estimator):
    model = _model(policy, estimator=estimator, pathwise_source="critic")
    assert model.policy.pi_features_extractor is not model.policy.vf_features_extractor
    model.learn(32)  # two rollouts, two updates each with two epochs of two minibatches
    assert model._n_updates == 4


def test_unshared_extractors_branch_features():
    """Each helper reads its own branch: the actor the pi extractor, the advantage head the vf one."""
    model = _model("MlpPolicy", pathwise_source="critic")
    policy = model.policy
    obs = th.as_tensor(model.observation_space.sample()[None])
    with th.no_grad():
        pi_features, vf_features = policy.extract_features(obs)
        assert th.equal(policy.advantage_features(obs), vf_features)
        assert th.equal(policy.actor_mean(obs), policy.action_net(policy.mlp_extractor.forward_actor(pi_features)))
        assert th.equal(policy.extract_features(obs, policy.pi_features_extractor), pi_features)
