"""SAC whose perception module is trained by the critic and the auxiliary losses (DrQ, SAC-AE)."""

from __future__ import annotations

from dataclasses import dataclass
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

from agents.buffers import FrameReplayBuffer
from agents.extractor import LossLog, PerceptionExtractor, perception_extractor


@dataclass
class Encoded:
    """Features already computed by a features extractor, passed where SB3 passes observations
    (``actor.action_log_prob(Encoded(f))``, ``critic(Encoded(f), actions)``): the actor and the
    critic then skip their extractor. :meth:`PerceptionSAC.train` encodes each batch once and
    reuses the features."""

    features: th.Tensor


class DetachedFeaturesActor(Actor):
    """SAC actor that reads its features extractor without gradients: the actor loss never
    trains the (shared) extractor."""

    def extract_features(  # type: ignore[override]
        self, obs: PyTorchObs | Encoded, features_extractor: BaseFeaturesExtractor
    ) -> th.Tensor:
        if isinstance(obs, Encoded):
            return obs.features.detach()
        with th.no_grad():
            return super().extract_features(obs, features_extractor)


class PerceptionCritic(ContinuousCritic):
    """Twin Q-networks whose loss trains the features extractor they read.

    SB3's critic computes shared features without gradients (there the actor trains the
    extractor); here ``detach_features=False`` (the default) lets the critic loss reach it.
    """

    def forward(  # type: ignore[override]
        self, obs: PyTorchObs | Encoded, actions: th.Tensor, detach_features: bool = False
    ) -> tuple[th.Tensor, ...]:
        if isinstance(obs, Encoded):
            features = obs.features.detach() if detach_features else obs.features
        else:
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
    (``aux_loss_coef`` times their weighted sum), and the actor acts on detached features
    (:class:`PerceptionSACPolicy`). The perception's training-mode augmentation (Keypoint3D's
    random crops, DrQ's random shifts) applies to the online encoder. Keypoint3D's paper uses PPO;
    this is the off-policy variant.

    Cost per gradient step: the online perception encodes the batch's observations once (with
    gradients, and its decoder for the auxiliary losses on the first ``aux_batch_size`` of them)
    and its next observations once (without gradients, for the next actions); the target critic's
    copy encodes the next observations for the targets. The actor's action and loss reuse the
    observations' features (detached, from before this step's critic update), where SB3 runs a
    features extractor five times per step. The replay buffer (:class:`FrameReplayBuffer`)
    stores each image once.

    With ``"MlpPolicy"`` (states, or a frozen perception's features) this is SB3's SAC unchanged.

    Logged under ``kp3d/``: ``aux_loss`` and ``aux/<term>`` (the auxiliary losses).

    Args:
        policy: ``"MultiInputPolicy"`` (:class:`PerceptionSACPolicy`) with ``policy_kwargs``
            naming ``features_extractor_class=PerceptionExtractor``, or ``"MlpPolicy"``.
        env: the vectorised env.
        joint: let the critic loss train the perception (default); ``False``: the critic sees
            detached features and only the auxiliary losses train the perception.
        aux_loss_coef: multiplier of the perception's weighted auxiliary losses in the critic
            loss.
        aux_batch_size: compute the auxiliary losses on this many of each batch's observations
            (the decoder is most of a step's cost); ``None``: on all of them.
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
        aux_batch_size: int | None = None,
        _init_setup_model: bool = True,
        **kwargs: Any,
    ) -> None:
        if policy == "MultiInputPolicy" and kwargs.get("replay_buffer_class") is None:
            kwargs["replay_buffer_class"] = FrameReplayBuffer
        super().__init__(policy, env, _init_setup_model=False, **kwargs)
        if aux_batch_size is not None and aux_batch_size < 1:
            raise ValueError(f"aux_batch_size must be positive or None; got {aux_batch_size}")
        self.joint = joint
        self.aux_loss_coef = aux_loss_coef
        self.aux_batch_size = aux_batch_size
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
        """SB3's ``SAC.train`` loop (copied: the steps below differ), with each batch encoded
        once and the perception trained by the critic and its own losses."""
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

            # Differs from SB3: one online pass with gradients (and the auxiliary losses) for the
            # observations, one without for the next observations, one of the target copy.
            with extractor.computing_losses(samples=self.aux_batch_size):
                features = self.critic.extract_features(
                    replay_data.observations, self.critic.features_extractor
                )
                aux_losses = dict(extractor.last_losses)
            encoded = Encoded(features)
            with th.no_grad():
                next_online = Encoded(
                    self.critic.extract_features(
                        replay_data.next_observations, self.critic.features_extractor
                    )
                )
                next_target = Encoded(
                    self.critic_target.extract_features(
                        replay_data.next_observations, self.critic_target.features_extractor
                    )
                )

            actions_pi, log_prob = self.actor.action_log_prob(encoded)
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
                next_actions, next_log_prob = self.actor.action_log_prob(next_online)
                next_q_values = th.cat(self.critic_target(next_target, next_actions), dim=1)
                next_q_values, _ = th.min(next_q_values, dim=1, keepdim=True)
                next_q_values = next_q_values - ent_coef * next_log_prob.reshape(-1, 1)
                target_q_values = (
                    replay_data.rewards + (1 - replay_data.dones) * discounts * next_q_values
                )

            current_q_values = self.critic(encoded, replay_data.actions)
            critic_loss = 0.5 * sum(F.mse_loss(q, target_q_values) for q in current_q_values)
            assert isinstance(critic_loss, th.Tensor)
            critic_losses.append(critic_loss.item())
            if aux_losses:
                critic_loss = critic_loss + self.aux_loss_coef * aux_log.add(aux_losses)

            self.critic.optimizer.zero_grad()
            critic_loss.backward()
            self.critic.optimizer.step()

            # The actor loss reads the observations' features from before this critic update.
            q_values_pi = th.cat(self.critic(encoded, actions_pi, detach_features=True), dim=1)
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


__all__ = [
    "DetachedFeaturesActor",
    "Encoded",
    "PerceptionCritic",
    "PerceptionSAC",
    "PerceptionSACPolicy",
]
