"""PPO with a perception module trained jointly with the policy and by extra unsupervised steps."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.policies import BasePolicy, MultiInputActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.common.utils import explained_variance, obs_as_tensor
from torch.nn import functional as F

from agents.buffers import FrameBuffer
from agents.extractor import LossLog, PerceptionExtractor, perception_extractor
from envs.observations import CAMERA_PREFIX, EXTRINSICS_KEY


class PerceptionActorCriticPolicy(MultiInputActorCriticPolicy):
    """SB3's ``MultiInputPolicy`` that leaves the perception module's own initialisation alone.

    SB3 re-initialises the features extractor orthogonally (``ortho_init``). A perception module
    chooses its own initialisation (e.g. Keypoint3D's heatmap logits), and the reference builds
    it after the policy for that reason; here its parameters are restored after SB3's build. The
    rest of the extractor (the projection layer) keeps SB3's initialisation.
    """

    def _build(self, lr_schedule: Schedule) -> None:
        extractor = perception_extractor(self)
        initial = None
        if extractor is not None:
            initial = {k: v.clone() for k, v in extractor.perception.state_dict().items()}
        super()._build(lr_schedule)
        if extractor is not None and initial is not None:
            extractor.perception.load_state_dict(initial)


class PerceptionPPO(PPO):
    """PPO whose policy sees through a perception module, as in Keypoint3D.

    Chen, Abbeel and Pathak, "Unsupervised Learning of Visual 3D Keypoints for Control", ICML
    2021 (arXiv:2106.07643), Sec. 3.4 and App. B; reference code
    github.com/buoyancy99/unsup-3d-keypoints. With a :class:`agents.extractor.PerceptionExtractor`
    (policy ``"MultiInputPolicy"``, i.e. :class:`PerceptionActorCriticPolicy`), each update:

    1. stores the rollout's frames (camera images, plus extrinsics for moving cameras) in a
       :class:`agents.buffers.FrameBuffer`;
    2. runs SB3's PPO epochs; with ``joint=True`` the perception's auxiliary losses, computed on
       the same minibatch, are added to the PPO loss and the policy gradients flow into the
       perception; with ``joint=False`` the policy sees detached features. The policy's and the
       perception's gradients are clipped separately (``max_grad_norm`` and
       ``perception_max_grad_norm``);
    3. takes ``unsupervised_steps`` gradient steps of the auxiliary losses alone, on batches
       sampled from the frame buffer, with the perception's own Adam optimizer.

    The PPO epochs come before the unsupervised steps (the reference does the opposite) so that the
    first PPO minibatch sees the features that produced the rollout's log-probabilities.
    With ``"MlpPolicy"`` (state observations) this is SB3's PPO unchanged.

    Logged under ``kp3d/``: ``joint_aux_loss`` and ``joint_aux/<term>`` (auxiliary losses in the
    PPO epochs), ``perception_grad_norm``, ``unsupervised_loss`` and ``unsupervised/<term>``,
    ``unsupervised_grad_norm``, ``frame_buffer_frames``.

    Args:
        policy: ``"MultiInputPolicy"`` with ``policy_kwargs`` naming
            ``features_extractor_class=PerceptionExtractor``, or ``"MlpPolicy"``.
        env: the vectorised env.
        joint: train the perception with the RL loss as well (reference default: True).
        aux_loss_coef: multiplier of the perception's weighted auxiliary losses in the PPO loss.
        aux_batch_size: compute those losses on this many of each minibatch's observations (the
            decoder is most of an epoch's cost); ``None``: on all of them.
        perception_max_grad_norm: gradient-norm clip of the perception's parameters in the PPO
            epochs (the reference decays it from 15 to ``max_grad_norm + 3``).
        unsupervised_steps: unsupervised gradient steps per update (reference 400; 0 disables the
            frame buffer too).
        unsupervised_batch_size: frames per unsupervised step (reference 64).
        unsupervised_buffer_size: frame buffer capacity (reference 100 000).
        unsupervised_learning_rate: learning rate of the perception's Adam optimizer (reference:
            the PPO learning rate).
        unsupervised_max_grad_norm: gradient-norm clip of the unsupervised steps (reference 1.5).
        **kwargs: SB3 PPO's arguments (``learning_rate``, ``n_steps``, ``batch_size``,
            ``n_epochs``, ``gamma``, ``gae_lambda``, ``clip_range``, ``ent_coef``, ``vf_coef``,
            ``max_grad_norm``, ``target_kl``, ``policy_kwargs``, ``seed``, ``device``...); the
            reference uses lr 3e-4, gamma 0.99, GAE lambda 0.95, clip 0.2, batch 64, 8 epochs,
            400 steps x 16 envs, ``max_grad_norm`` 2 and rewards normalised by ``VecNormalize``.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        **PPO.policy_aliases,
        "MultiInputPolicy": PerceptionActorCriticPolicy,
    }

    def __init__(
        self,
        policy: str | type[BasePolicy],
        env: Any,
        joint: bool = True,
        aux_loss_coef: float = 1.0,
        aux_batch_size: int | None = None,
        perception_max_grad_norm: float = 5.0,
        unsupervised_steps: int = 32,
        unsupervised_batch_size: int = 32,
        unsupervised_buffer_size: int = 20_000,
        unsupervised_learning_rate: float = 3e-4,
        unsupervised_max_grad_norm: float = 1.5,
        _init_setup_model: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(policy, env, _init_setup_model=False, **kwargs)
        self.joint = joint
        self.aux_loss_coef = aux_loss_coef
        self.aux_batch_size = aux_batch_size
        self.perception_max_grad_norm = perception_max_grad_norm
        self.unsupervised_steps = unsupervised_steps
        self.unsupervised_batch_size = unsupervised_batch_size
        self.unsupervised_buffer_size = unsupervised_buffer_size
        self.unsupervised_learning_rate = unsupervised_learning_rate
        self.unsupervised_max_grad_norm = unsupervised_max_grad_norm
        self.perception_optimizer: th.optim.Optimizer | None = None
        self.frame_buffer: FrameBuffer | None = None
        if _init_setup_model:
            self._setup_model()

    @property
    def extractor(self) -> PerceptionExtractor | None:
        """The policy's perception extractor (``None`` for state-based policies)."""
        return perception_extractor(self.policy)

    def _setup_model(self) -> None:
        super()._setup_model()
        extractor = self.extractor
        self.perception_optimizer = None
        self.frame_buffer = None
        if extractor is None:
            return
        extractor.detach_features = not self.joint
        self.perception_optimizer = th.optim.Adam(
            extractor.perception.parameters(), lr=self.unsupervised_learning_rate
        )
        if self.unsupervised_steps > 0:
            stored = {
                key: space
                for key, space in self.observation_space.spaces.items()
                if key.startswith(CAMERA_PREFIX) or key == EXTRINSICS_KEY
            }
            self.frame_buffer = FrameBuffer(
                spaces.Dict(stored), self.unsupervised_buffer_size, seed=self.seed
            )

    def _excluded_save_params(self) -> list[str]:
        # The frame buffer is large and refills from rollouts.
        return [*super()._excluded_save_params(), "frame_buffer"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, variables = super()._get_torch_save_params()
        if self.perception_optimizer is not None:
            state_dicts = [*state_dicts, "perception_optimizer"]
        return state_dicts, variables

    def train(self) -> None:
        """One update from the rollout buffer: PPO epochs, then unsupervised perception steps."""
        extractor = self.extractor
        if extractor is None:
            super().train()
            return
        if self.frame_buffer is not None:
            self.frame_buffer.add(
                {
                    key: frames.reshape(-1, *frames.shape[2:])
                    for key, frames in self.rollout_buffer.observations.items()
                    if key in self.frame_buffer.frames
                }
            )
            self.logger.record("kp3d/frame_buffer_frames", len(self.frame_buffer))
        self._train_ppo(extractor)
        if self.frame_buffer is not None:
            self._train_unsupervised(extractor)

    def _clip_gradients(self, extractor: PerceptionExtractor) -> float:
        """Clip the policy's and the perception's gradients separately; return the latter's norm."""
        perception = {id(p) for p in extractor.perception.parameters()}
        policy_parameters = [p for p in self.policy.parameters() if id(p) not in perception]
        th.nn.utils.clip_grad_norm_(policy_parameters, self.max_grad_norm)
        return float(
            th.nn.utils.clip_grad_norm_(
                extractor.perception.parameters(), self.perception_max_grad_norm
            )
        )

    def _train_ppo(self, extractor: PerceptionExtractor) -> None:
        """SB3's ``PPO.train`` loop, plus the auxiliary losses and the separate clipping."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]

        entropy_losses, pg_losses, value_losses, clip_fractions = [], [], [], []
        aux_log = LossLog()
        perception_grad_norms = []
        approx_kl_divs: list[float] = []
        continue_training = True
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            for rollout_data in self.rollout_buffer.get(self.batch_size):
                actions = rollout_data.actions
                if isinstance(self.action_space, spaces.Discrete):
                    actions = rollout_data.actions.long().flatten()

                with extractor.computing_losses(self.joint, samples=self.aux_batch_size):
                    values, log_prob, entropy = self.policy.evaluate_actions(
                        rollout_data.observations, actions
                    )
                    aux_losses = dict(extractor.last_losses)
                values = values.flatten()
                advantages = rollout_data.advantages
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

                ratio = th.exp(log_prob - rollout_data.old_log_prob)
                policy_loss_1 = advantages * ratio
                policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
                policy_loss = -th.min(policy_loss_1, policy_loss_2).mean()
                pg_losses.append(policy_loss.item())
                clip_fractions.append(th.mean((th.abs(ratio - 1) > clip_range).float()).item())

                if self.clip_range_vf is None:
                    values_pred = values
                else:
                    values_pred = rollout_data.old_values + th.clamp(
                        values - rollout_data.old_values, -clip_range_vf, clip_range_vf
                    )
                value_loss = F.mse_loss(rollout_data.returns, values_pred)
                value_losses.append(value_loss.item())

                entropy_loss = -th.mean(-log_prob) if entropy is None else -th.mean(entropy)
                entropy_losses.append(entropy_loss.item())

                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
                if aux_losses:
                    loss = loss + self.aux_loss_coef * aux_log.add(aux_losses)

                with th.no_grad():
                    log_ratio = log_prob - rollout_data.old_log_prob
                    approx_kl_div = th.mean((th.exp(log_ratio) - 1) - log_ratio).cpu().numpy()
                    approx_kl_divs.append(float(approx_kl_div))
                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(
                            f"Early stopping at step {epoch} due to reaching max kl: "
                            f"{approx_kl_div:.2f}"
                        )
                    break

                self.policy.optimizer.zero_grad()
                loss.backward()
                perception_grad_norms.append(self._clip_gradients(extractor))
                self.policy.optimizer.step()

            self._n_updates += 1
            if not continue_training:
                break

        explained_var = explained_variance(
            self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten()
        )
        self.logger.record("train/entropy_loss", np.mean(entropy_losses))
        self.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
        self.logger.record("train/value_loss", np.mean(value_losses))
        self.logger.record("train/approx_kl", np.mean(approx_kl_divs))
        self.logger.record("train/clip_fraction", np.mean(clip_fractions))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if self.clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)
        aux_log.record(self.logger, "joint_aux")
        if perception_grad_norms:
            self.logger.record("kp3d/perception_grad_norm", np.mean(perception_grad_norms))

    def _train_unsupervised(self, extractor: PerceptionExtractor) -> None:
        """``unsupervised_steps`` steps of the auxiliary losses on frames from the buffer."""
        assert self.frame_buffer is not None and self.perception_optimizer is not None
        extractor.perception.train()
        log = LossLog()
        grad_norms = []
        for _ in range(self.unsupervised_steps):
            frames = self.frame_buffer.sample(self.unsupervised_batch_size)
            batch = obs_as_tensor(frames, self.device)
            observations = preprocess_obs(batch, self.observation_space)
            output = extractor.perceive(observations, compute_losses=True)  # type: ignore[arg-type]
            if not output.losses:
                warnings.warn(
                    f"{type(extractor.perception).__name__} has no auxiliary losses: skipping the "
                    "unsupervised steps (set unsupervised_steps=0)",
                    stacklevel=2,
                )
                return
            loss = log.add(output.losses)
            self.perception_optimizer.zero_grad()
            loss.backward()
            grad_norms.append(
                float(
                    th.nn.utils.clip_grad_norm_(
                        extractor.perception.parameters(), self.unsupervised_max_grad_norm
                    )
                )
            )
            self.perception_optimizer.step()
        log.record(self.logger, "unsupervised")
        self.logger.record("kp3d/unsupervised_grad_norm", np.mean(grad_norms))


__all__ = ["PerceptionActorCriticPolicy", "PerceptionPPO"]
