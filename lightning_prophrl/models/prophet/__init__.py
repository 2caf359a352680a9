"""Prophet: history-aware action-to-video world model with dual action conditioning (paper: the Prophet world model).

Two backbones share every interface (training loss, generation, rollouts, history, both action streams, the success
head, LoRA, ``save_pretrained``): ``backbone="cosmos"`` (below; the paper's, and the real-scale 2B config) and
``backbone="unet"`` (a diffusers ``UNet2DModel`` in pixel space under EDM, the embedded CPU default; see
:mod:`lightning_prophrl.models.unet_backbone`).

Cosmos backbone: diffusers ``CosmosTransformer3DModel`` used Cosmos-Predict2 Video2World style. The clip latents are
``[cond latent frame(s), future latents]`` along time with a condition-mask channel; the conditioning frames are clean
(timestep ``cond_t``) and the loss is on the future latents only. Text conditioning is zeroed (paper: Prophet
backbone): the cross-attention context is a zero (or learned null) sequence of ``null_context_tokens`` tokens.

Objective: rectified flow. ``z_t = (1 - t) z_0 + t eps``, the network predicts the velocity ``v = eps - z_0`` from
``(z_t, t)`` with ``t`` in ``[0, 1]`` fed as ``t * timestep_scale``. This is exactly Cosmos-Predict2's own
parameterization (its pipeline feeds ``c_in * x_sigma`` with ``t = sigma / (1 + sigma)`` and reads the output as
``v``), so a pretrained Cosmos-Predict2 backbone needs ``timestep_scale=1``.

How the conditioning is injected (the least fragile routes, using only public module structure):

* Actions (as in the paper): ``t~ = t + f_sa + f_af``. A forward hook on ``transformer.time_embed`` adds the action
  embedding to its second output ``embedded_timestep`` (``(B * T, D)``), which feeds the AdaLN modulation of every
  block and of the output layer. ``f_sa`` is one vector per sample; ``f_af`` is one vector per future latent frame
  (zero for samples with ``has_camera == False``). With ``action_frame_mode`` ``"concat"`` / ``"both"`` the
  action-frame latents of the future frames are also concatenated to the DiT's input channels (pixel-aligned; zeros on
  the conditioning frames and for samples without a camera), beyond the paper.
* Conditioning frame as channels (``cond_concat``, beyond the paper, Stable Video Diffusion style): the clean latent of
  the current frame is also concatenated to the input channels of every frame, so each future token sees, at its own
  position, the scene it continues from next to the commanded target drawn there. Without it the current frame
  reaches a future token only through attention to the conditioning frame's tokens.
* Previous frame as channels (``prev_concat``, beyond the paper, as in frame-stacking video predictors): the newest
  history latent is concatenated too, so each token sees the pixel-level motion of the last frame step (the pooled
  memory averages 8 x 8-pixel blocks, where a 1-pixel edge shift is invisible). A missing previous frame is filled
  with the current one (zero motion). Off in the tiny configs: no gain measured (the stride-4 pixel motion of the
  Meta-World data is jitter, docs/history.md round 5).
* History (as in the paper): :mod:`lightning_prophrl.models.history` memory tokens as extra K/V in every block's
  self-attention through a diffusers attention processor.
* Success head: a forward hook on the last block keeps its hidden states; the mean over the future-frame tokens goes
  through an MLP to a success / task-progress logit (a reward from the world model's own state).

Sampling (:meth:`Prophet.generate`, :meth:`Prophet.rollout`) uses diffusers' ``FlowMatchEulerDiscreteScheduler``
with ``sigmas = linspace(1, 1/N, N)`` (then shifted), so 1-2 step sampling spends its steps evenly.
"""

from lightning_prophrl.models.prophet.forward import ProphetOutput
from lightning_prophrl.models.prophet.model import DEFAULT_LORA_TARGETS, Prophet
from lightning_prophrl.models.prophet.sampling import ProphetGeneration, ProphetRollout

__all__ = ["DEFAULT_LORA_TARGETS", "Prophet", "ProphetGeneration", "ProphetOutput", "ProphetRollout"]
