"""SAC whose perception module is trained by the critic and the auxiliary losses (DrQ, SAC-AE)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch as th
from stable_baselines3 import SAC
from stable_baselines3.common.policies import BasePolicy, ContinuousCritic
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.sac.policies import Actor, MultiInputPolicy
from torch.nn import functional as F

from agents.extractor import LossLog, PerceptionExtractor, perception_extractor


class DetachedFeaturesActor(Actor):
    """SAC actor that reads its features extractor without gradients: the actor loss never
    trains the (shared) extractor."""

    def extract_features(  # type: ignore[override]
        self, obs: PyTorchObs, features_extractor: BaseFeaturesExtractor
    ) -> th.Tensor:
        with th.no_grad():
            return super().extract_features(obs, features_extractor)


class PerceptionCritic(ContinuousCritic):
    """Twin Q-networks whose loss trains the features extractor they read.

    SB3's critic computes shared features without gradients (there the actor trains the
    extractor); here ``detach_features=False`` (the default) lets the critic loss reach it.
    """

    def forward(  # type: ignore[override]
        self, obs: th.Tensor, actions: th.Tensor, detach_features: bool = False
    ) -> tuple[th.Tensor, ...]:
        with th.set_grad_enabled(th.is_grad_enabled() and not detach_features):
            features = self.extract_features(obs, self.features_extractor)
        qvalue_input = th.cat([features, actions], dim=1)
        return tuple(q_net(qvalue_input) for q_net in self.q_networks)


class PerceptionSACPolicy(MultiInputPolicy):
    """SAC policy with one features extractor, trained by the critic, read detached by the actor.

    The actor and the critic share the extractor; the critic's optimizer holds it (with the
    Q-networks) and the actor's optimizer only the actor's own layers. The target critic keeps
    its own copy of the extractor, Polyak-averaged with the critic's (SAC-AE's target encoder).
    This is the arrangement of DrQ (Kostrikov et al., ICLR 2021) and SAC-AE (Yarats et al., AAAI
    2021), and the opposite of SB3's ``share_features_extractor=True``; the extractor is always
    shared, whatever ``share_features_extractor`` says.
    """

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> Actor:
        kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        return DetachedFeaturesActor(**kwargs).to(self.device)

    def make_critic(
        self, features_extractor: BaseFeaturesExtractor | None = None
    ) -> ContinuousCritic:
        kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        return PerceptionCritic(**kwargs).to(self.device)

    def _build(self, lr_schedule: Schedule) -> None:
        self.actor = self.make_actor()
        self.critic = self.make_critic(features_extractor=self.actor.features_extractor)
        self.critic_target = self.make_critic(features_extractor=None)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.set_training_mode(False)
        actor_parameters = [
            parameter
            for name, parameter in self.actor.named_parameters()
            if not name.startswith("features_extractor.")
        ]
        self.actor.optimizer = self.optimizer_class(
            actor_parameters,
            lr=lr_schedule(1),  # type: ignore[call-arg]
            **self.optimizer_kwargs,
        )
        self.critic.optimizer = self.optimizer_class(
            self.critic.parameters(),
            lr=lr_schedule(1),  # type: ignore[call-arg]
            **self.optimizer_kwargs,
        )


class PerceptionSAC(SAC):
    """Soft Actor-Critic with a perception module under the critic, DrQ/SAC-AE style.

    Haarnoja et al., "Soft Actor-Critic Algorithms and Applications", 2018 (arXiv:1812.05905),
    with the encoder arrangement of DrQ (Kostrikov, Yarats, Fergus, ICLR 2021) and SAC-AE (Yarats
    et al., AAAI 2021): the perception is trained by the critic loss plus its own auxiliary losses
    (``aux_loss_coef`` times their weighted sum, computed on the critic's forward pass), and the
    actor acts on detached features (:class:`PerceptionSACPolicy`). Keypoint3D's paper uses PPO;
    this is the off-policy variant for comparison.

    Memory: SB3's ``DictReplayBuffer`` stores every image twice (observation and next
    observation; ``optimize_memory_usage`` is not supported with Dict observations), about 74 KB
    per transition for 3 cameras at 64x64: 20 000 transitions take about 1.5 GB.

    With ``"MlpPolicy"`` (state observations) this is SB3's SAC unchanged.

    Logged under ``kp3d/``: ``aux_loss`` and ``aux/<term>`` (the auxiliary losses).

    Args:
        policy: ``"MultiInputPolicy"`` (:class:`PerceptionSACPolicy`) with ``policy_kwargs``
            naming ``features_extractor_class=PerceptionExtractor``, or ``"MlpPolicy"``.
        env: the vectorised env.
        joint: let the critic loss train the perception (default); ``False``: the critic sees
            detached features and only the auxiliary losses train the perception.
        aux_loss_coef: multiplier of the perception's weighted auxiliary losses in the critic
            loss.
        **kwargs: SB3 SAC's arguments (``learning_rate``, ``buffer_size``, ``learning_starts``,
            ``batch_size``, ``tau``, ``gamma``, ``train_freq``, ``gradient_steps``, ``ent_coef``,
            ``policy_kwargs``, ``seed``, ``device``...). DrQ uses lr 1e-3, batch 128, tau 0.01
            and a 100 000-transition buffer (:class:`agents.config.SACConfig` has the CPU-sized
            defaults of ``kp3d train``).
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        **SAC.policy_aliases,
        "MultiInputPolicy": PerceptionSACPolicy,
    }

    def __init__(
        self,
        policy: str | type[BasePolicy],
        env: Any,
        joint: bool = True,
        aux_loss_coef: float = 1.0,
        _init_setup_model: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(policy, env, _init_setup_model=False, **kwargs)
        self.joint = joint
        self.aux_loss_coef = aux_loss_coef
        if _init_setup_model:
            self._setup_model()

    @property
    def extractor(self) -> PerceptionExtractor | None:
        """The shared perception extractor (``None`` for state-based policies)."""
        return perception_extractor(self.policy)

    def _setup_model(self) -> None:
        super()._setup_model()
        extractor = self.extractor
        if extractor is not None:
            extractor.detach_features = not self.joint

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        """SB3's ``SAC.train`` loop with the perception trained by the critic and its losses."""
        extractor = self.extractor
        if extractor is None:
            super().train(gradient_steps, batch_size)
            return
        self.policy.set_training_mode(True)
        optimizers = [self.actor.optimizer, self.critic.optimizer]
        if self.ent_coef_optimizer is not None:
            optimizers += [self.ent_coef_optimizer]
        self._update_learning_rate(optimizers)

        ent_coef_losses, ent_coefs = [], []
        actor_losses, critic_losses = [], []
        aux_log = LossLog()
        for gradient_step in range(gradient_steps):
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
            if self.use_sde:
                self.actor.reset_noise()

            actions_pi, log_prob = self.actor.action_log_prob(replay_data.observations)
            log_prob = log_prob.reshape(-1, 1)

            ent_coef_loss = None
            if self.ent_coef_optimizer is not None and self.log_ent_coef is not None:
                ent_coef = th.exp(self.log_ent_coef.detach())
                assert isinstance(self.target_entropy, float)
                entropy_gap = (log_prob + self.target_entropy).detach()
                ent_coef_loss = -(self.log_ent_coef * entropy_gap).mean()
                ent_coef_losses.append(ent_coef_loss.item())
            else:
                ent_coef = self.ent_coef_tensor
            ent_coefs.append(ent_coef.item())
            if ent_coef_loss is not None and self.ent_coef_optimizer is not None:
                self.ent_coef_optimizer.zero_grad()
                ent_coef_loss.backward()
                self.ent_coef_optimizer.step()

            with th.no_grad():
                next_observations = replay_data.next_observations
                next_actions, next_log_prob = self.actor.action_log_prob(next_observations)
                next_q_values = th.cat(self.critic_target(next_observations, next_actions), dim=1)
                next_q_values, _ = th.min(next_q_values, dim=1, keepdim=True)
                next_q_values = next_q_values - ent_coef * next_log_prob.reshape(-1, 1)
                target_q_values = (
                    replay_data.rewards + (1 - replay_data.dones) * discounts * next_q_values
                )

            with extractor.computing_losses():
                current_q_values = self.critic(replay_data.observations, replay_data.actions)
                aux_losses = dict(extractor.last_losses)
            critic_loss = 0.5 * sum(F.mse_loss(q, target_q_values) for q in current_q_values)
            assert isinstance(critic_loss, th.Tensor)
            critic_losses.append(critic_loss.item())
            if aux_losses:
                critic_loss = critic_loss + self.aux_loss_coef * aux_log.add(aux_losses)

            self.critic.optimizer.zero_grad()
            critic_loss.backward()
            self.critic.optimizer.step()

            q_values_pi = th.cat(
                self.critic(replay_data.observations, actions_pi, detach_features=True), dim=1
            )
            min_qf_pi, _ = th.min(q_values_pi, dim=1, keepdim=True)
            actor_loss = (ent_coef * log_prob - min_qf_pi).mean()
            actor_losses.append(actor_loss.item())
            self.actor.optimizer.zero_grad()
            actor_loss.backward()
            self.actor.optimizer.step()

            if gradient_step % self.target_update_interval == 0:
                polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)

        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/ent_coef", np.mean(ent_coefs))
        self.logger.record("train/actor_loss", np.mean(actor_losses))
        self.logger.record("train/critic_loss", np.mean(critic_losses))
        if ent_coef_losses:
            self.logger.record("train/ent_coef_loss", np.mean(ent_coef_losses))
        aux_log.record(self.logger, "aux")


__all__ = ["DetachedFeaturesActor", "PerceptionCritic", "PerceptionSAC", "PerceptionSACPolicy"]
