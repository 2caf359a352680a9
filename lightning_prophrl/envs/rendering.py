"""Fast headless MuJoCo rendering with a calibrated pinhole camera (intrinsics K and OpenCV extrinsics).

MuJoCo's default offscreen path renders a 4096 shadow map with 4x MSAA, about 90 ms per frame on a CPU. The fast path
of ``FastRenderer`` sets ``model.vis.quality.offsamples = 0`` *before* the render context
exists and clears the shadow and reflection flags of the scene once, which brings a 64x64 frame to 5-10 ms; images are
pixel-identical to ``mujoco.Renderer`` with the same settings. All renderers share one GL context per process and
skip the shadow map, so building one costs about 0.1 s instead of 0.5 s.

Cameras are either a free camera (``FreeCamera``: lookat, distance, azimuth, elevation, as in MuJoCo's viewer) or a
camera named in the model. Two free-camera presets are tuned for Meta-World's Sawyer table (``CAMERA_PRESETS``):

* ``"overview"``: lookat (0, 0.7, 0.1), distance 1.1, azimuth 145, elevation -35. The whole arm, every object and the
  goal markers are in view (docs/results.md); at 64 px a puck is only 2-3 px wide.
* ``"workspace"``: lookat (-0.05, 0.68, 0.15), distance 0.85, azimuth 165, elevation -35. Zoomed on the table: an
  object is 1.3x wider in pixels than in ``"overview"`` (a 4 cm object spans 3.7 px at 64 px against 2.8 px) and the
  empty background above the table is gone. Chosen by a grid search over free cameras that maximises the projected
  object size under the constraint that, over 8 seeds x the whole scripted-expert episode, 100% of the object and
  goal positions and of the hand positions of the 11 calibration tasks (reach, button-press-topdown, drawer-open/close,
  door-open, window-open, plate-slide, push, pick-place, coffee-button, handle-press) project at least 2 px inside a
  64x64 frame. It covers 45 of the 50 v3 tasks entirely; use ``"overview"`` for door-close, shelf-place, stick-push,
  stick-pull and sweep, whose objects, goals or hand paths leave it. The default of ``MetaWorldEnv``.

Geometry conventions (used by action-frame rendering and by anything that projects 3-D points to pixels):

* ``intrinsics()``: ``K`` (3, 3) in pixels of the output image, square pixels, ``f = (H / 2) / tan(fovy / 2)``,
  principal point at the image centre ``((W - 1) / 2, (H - 1) / 2)``: pixel centres lie at integer coordinates, so
  ``round(u), round(v)`` index the pixel that contains a projected point.
* ``extrinsics()``: world -> camera (4, 4), OpenCV axes (x right, y down, z forward, metres), read from MuJoCo's own
  camera pose after ``mjv_updateScene`` (the mean of the two stereo eyes, which is the head position).
* Images are returned top row first (MuJoCo's bottom-up buffer is flipped), so ``v`` grows downwards, as the
  extrinsics assume. Meta-World's built-in ``corner*`` cameras are mounted upside-down: prefer a free camera.
"""

from __future__ import annotations

import atexit
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")  # must precede the first ``import mujoco``; headless machines have EGL

import mujoco  # noqa: E402
import numpy as np  # noqa: E402


def _check_gl_backend() -> None:
    """Fail clearly when mujoco was imported (e.g. by metaworld) before ``MUJOCO_GL`` was set on a headless machine."""
    backend = getattr(mujoco.gl_context, "_MUJOCO_GL", "")
    if backend in ("", "glfw", "enable", "enabled", "on", "true", "1") and not os.environ.get("DISPLAY"):
        raise RuntimeError(
            "mujoco was imported with the GLFW backend but there is no display: export MUJOCO_GL=egl (or osmesa), "
            "or import lightning_prophrl.envs before metaworld/mujoco so that it can set MUJOCO_GL=egl first"
        )


@dataclass(frozen=True)
class FreeCamera:
    """A MuJoCo free camera, orbiting ``lookat``.

    Args:
        lookat: point the camera looks at, world metres ``(3,)``.
        distance: distance from ``lookat`` to the camera, metres.
        azimuth: rotation about the world z axis, degrees (MuJoCo's convention).
        elevation: angle above the horizontal, degrees; negative looks down.
    """

    lookat: tuple[float, float, float] = (0.0, 0.7, 0.1)
    distance: float = 1.1
    azimuth: float = 145.0
    elevation: float = -35.0

    def __post_init__(self) -> None:
        if len(self.lookat) != 3:
            raise ValueError(f"FreeCamera.lookat must have 3 elements, got {self.lookat!r}")
        if self.distance <= 0:
            raise ValueError(f"FreeCamera.distance must be positive, got {self.distance}")
        if not -90.0 < self.elevation < 90.0:
            raise ValueError(f"FreeCamera.elevation must lie in (-90, 90) degrees, got {self.elevation}")

    def pose(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Closed-form camera pose: position, forward and up unit vectors ``(3,)`` each, world frame."""
        az, el = np.deg2rad(self.azimuth), np.deg2rad(self.elevation)
        forward = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        up = np.array([-np.sin(el) * np.cos(az), -np.sin(el) * np.sin(az), np.cos(el)])
        return np.asarray(self.lookat, dtype=np.float64) - self.distance * forward, forward, up


CAMERA_PRESETS: dict[str, FreeCamera] = {
    "overview": FreeCamera(lookat=(0.0, 0.7, 0.1), distance=1.1, azimuth=145.0, elevation=-35.0),
    "workspace": FreeCamera(lookat=(-0.05, 0.68, 0.15), distance=0.85, azimuth=165.0, elevation=-35.0),
}


def resolve_camera(camera: str | FreeCamera) -> str | FreeCamera:
    """Turn a preset name into its ``FreeCamera``; other strings stay model camera names."""
    if isinstance(camera, FreeCamera):
        return camera
    if not isinstance(camera, str):
        raise TypeError(f"camera must be a preset name, a model camera name or a FreeCamera, got {type(camera)}")
    return CAMERA_PRESETS.get(camera, camera)


def pose_to_extrinsics(pos: np.ndarray, forward: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Camera position and forward/up directions (world) -> world -> camera ``(4, 4)``, OpenCV axes.

    OpenCV's axes are x right, y down, z forward: the rows of the rotation are ``forward x up``, ``-up``, ``forward``.
    """
    forward = np.asarray(forward, dtype=np.float64) / np.linalg.norm(forward)
    up = np.asarray(up, dtype=np.float64)
    up = up - forward * (up @ forward)  # re-orthogonalise (MuJoCo stores float32 vectors)
    up = up / np.linalg.norm(up)
    rot = np.stack([np.cross(forward, up), -up, forward])
    extr = np.eye(4)
    extr[:3, :3] = rot
    extr[:3, 3] = -rot @ np.asarray(pos, dtype=np.float64)
    return extr


def fovy_to_intrinsics(fovy_deg: float, height: int, width: int) -> np.ndarray:
    """Vertical field of view (degrees) and output size -> pinhole ``K`` ``(3, 3)``, square pixels."""
    f = 0.5 * height / np.tan(0.5 * np.deg2rad(fovy_deg))
    return np.array([[f, 0.0, 0.5 * (width - 1)], [0.0, f, 0.5 * (height - 1)], [0.0, 0.0, 1.0]])


def project_points(points_world: np.ndarray, k: np.ndarray, extr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole projection of world points.

    Args:
        points_world: ``(..., 3)`` world coordinates, metres.
        k: ``(3, 3)`` intrinsics in pixels.
        extr: ``(4, 4)`` world -> camera transform, OpenCV axes.

    Returns:
        ``uv`` ``(..., 2)`` pixel coordinates (u right, v down, pixel centres at integers) and ``depth`` ``(...,)``
        along the optical axis in metres (negative behind the camera).
    """
    p = np.asarray(points_world, dtype=np.float64)
    if p.shape[-1] != 3:
        raise ValueError(f"points_world must have shape (..., 3), got {p.shape}")
    cam = p @ extr[:3, :3].T + extr[:3, 3]
    depth = cam[..., 2]
    pix = cam @ k.T
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = pix[..., :2] / pix[..., 2:3]
    return uv, depth


_GL_CONTEXTS: dict[int, Any] = {}  # one GL context per process, shared by every FastRenderer
_LIVE: weakref.WeakSet[FastRenderer] = weakref.WeakSet()
# render contexts shared by renderers of models with the same assets: key -> [MjrContext, number of renderers]
_RENDER_CONTEXTS: dict[tuple[Any, ...], list[Any]] = {}


def _assets_key(model: mujoco.MjModel) -> tuple[Any, ...]:
    """What a ``MjrContext`` holds of a model: its textures, meshes, height fields, skins and materials, and the
    offscreen buffer settings. Two models with the same key render identically through one context (e.g. every
    instance of one Meta-World task: the same XML, compiled once per instance)."""
    import hashlib

    h = hashlib.sha1()
    for name in ("tex_data", "tex_width", "tex_height", "mesh_vert", "mesh_face", "mesh_normal", "mesh_texcoord",
                 "hfield_data", "skin_vert", "mat_texid", "mat_rgba"):  # fmt: skip
        arr = getattr(model, name, None)
        if arr is not None:
            h.update(name.encode())
            h.update(np.ascontiguousarray(arr).tobytes())
    q, g = model.vis.quality, model.vis.global_
    return os.getpid(), h.hexdigest(), q.offsamples, q.shadowsize, g.offwidth, g.offheight


def _release_at_exit() -> None:
    """Free live render contexts, then the GL context, before mujoco's own exit hook terminates the EGL display
    (otherwise garbage collection at exit prints EGL errors)."""
    for renderer in list(_LIVE):
        renderer.close()
    ctx = _GL_CONTEXTS.pop(os.getpid(), None)
    if ctx is not None:
        ctx.free()


def _shared_gl_context() -> Any:
    """The process's shared GL context (created on first use; a forked child creates its own)."""
    pid = os.getpid()
    if pid not in _GL_CONTEXTS:
        _check_gl_backend()
        from mujoco import gl_context

        if gl_context.GLContext is None:
            raise RuntimeError("mujoco has no GL backend (MUJOCO_GL is disabled): rendering is unavailable")
        _GL_CONTEXTS[pid] = gl_context.GLContext(512, 512)  # EGL ignores the size; OSMesa's window buffer only
        atexit.register(_release_at_exit)  # runs before mujoco's earlier-registered eglTerminate
    ctx = _GL_CONTEXTS[pid]
    ctx.make_current()
    return ctx


class FastRenderer:
    """Offscreen RGB renderer of one MuJoCo model on the fast path, with a known pinhole camera.

    All renderers of a process share one GL context: creating a GL context per renderer, as ``mujoco.Renderer`` does,
    costs about 0.3 s of driver warm-up each on a CPU, which dominated building a batch of simulators. Renderers of
    models with the same assets (every simulator of one task) also share one ``mujoco.MjrContext`` (textures, meshes,
    offscreen framebuffer), which would otherwise cost each about 37 MB of memory for a Meta-World task.

    Args:
        model: the ``mujoco.MjModel``. Before its render context is created, ``vis.quality.offsamples`` is set to 0
            (no MSAA), ``vis.quality.shadowsize`` to 1 when shadows are off (no 4096x4096 shadow map to allocate)
            and the offscreen buffer ``vis.global_.offwidth/offheight`` to at least the output size.
        data: the ``mujoco.MjData`` to render (read at every ``render``).
        size: output size, an int for square images or ``(height, width)``.
        camera: a preset name from ``CAMERA_PRESETS`` (``"overview"``, ``"workspace"``), a ``FreeCamera``, or the
            name of a camera defined in the model.
        shadows: keep MuJoCo's shadows (slow; off on the fast path).
        reflections: keep reflections (off on the fast path).
        share_context: share the render context with other renderers of models with the same assets (turn off for a
            model whose textures or meshes change after the context is built).
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        data: mujoco.MjData,
        size: int | Sequence[int] = 64,
        camera: str | FreeCamera = "workspace",
        shadows: bool = False,
        reflections: bool = False,
        share_context: bool = True,
    ) -> None:
        # 1. Output size.
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        if height <= 0 or width <= 0:
            raise ValueError(f"size must be positive, got {size!r}")
        self.model, self.data, self.height, self.width = model, data, int(height), int(width)

        # 2. Camera: a MjvCamera, free (orbiting) or fixed (a model camera).
        self.camera = resolve_camera(camera)
        self._mjv_camera = mujoco.MjvCamera()
        if isinstance(self.camera, FreeCamera):
            self._mjv_camera.type = mujoco.mjtCamera.mjCAMERA_FREE
            self._mjv_camera.lookat[:] = self.camera.lookat
            self._mjv_camera.distance = self.camera.distance
            self._mjv_camera.azimuth = self.camera.azimuth
            self._mjv_camera.elevation = self.camera.elevation
            self._fovy = float(model.vis.global_.fovy)
        else:
            cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, self.camera)
            if cam_id < 0:
                names = [model.camera(i).name for i in range(model.ncam)]
                raise ValueError(f"camera {self.camera!r} is neither a preset {list(CAMERA_PRESETS)} nor in {names}")
            self._mjv_camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
            self._mjv_camera.fixedcamid = cam_id
            self._fovy = float(model.cam_fovy[cam_id])

        # 3. The fast path, set on the model before its render context exists: no MSAA, no shadow map.
        model.vis.quality.offsamples = 0
        if not shadows:
            model.vis.quality.shadowsize = 1
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)

        # 4. Scene (shadows/reflections off persist across mjv_updateScene) and a render context in the shared GL.
        self._gl = _shared_gl_context()
        self._option = mujoco.MjvOption()
        # room for every geom and site several times over (mujoco.Renderer's 10,000 cost ~5.6 MB per scene)
        self._scene = mujoco.MjvScene(model, maxgeom=max(1000, 4 * (model.ngeom + model.nsite)))
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = int(shadows)
        self._scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = int(reflections)
        # the context (textures, meshes, offscreen buffer: ~37 MB for a Meta-World task) is shared by every renderer
        # of a model with the same assets; frames are pixel-identical to a context of its own
        self._key = _assets_key(model) if share_context else (os.getpid(), id(self))
        shared = _RENDER_CONTEXTS.get(self._key)
        if shared is None:
            shared = _RENDER_CONTEXTS[self._key] = [mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150), 0]
        shared[1] += 1
        self._context: mujoco.MjrContext | None = shared[0]
        self._rect = mujoco.MjrRect(0, 0, self.width, self.height)
        self._rgb = np.empty((self.height, self.width, 3), dtype=np.uint8)
        _LIVE.add(self)

    def _draw(self) -> np.ndarray:
        """Update the scene from ``data``, render into this renderer's offscreen buffer and read it, bottom row first."""
        if self._context is None:
            raise RuntimeError("this FastRenderer was closed")
        self._gl.make_current()
        mujoco.mjv_updateScene(
            self.model, self.data, self._option, None, self._mjv_camera, mujoco.mjtCatBit.mjCAT_ALL, self._scene
        )
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)
        mujoco.mjr_render(self._rect, self._scene, self._context)
        mujoco.mjr_readPixels(self._rgb, None, self._rect, self._context)
        return self._rgb

    def render(self) -> np.ndarray:
        """Render the current state of ``data``.

        Returns:
            ``(H, W, 3)`` uint8 RGB, top row first (a new array).
        """
        return self._draw()[::-1].copy()

    def render_segmentation(self) -> np.ndarray:
        """Render geom ids per pixel.

        Returns:
            ``(H, W)`` int32 id of the geom visible at each pixel, -1 for background and non-geom objects.
        """
        flags = self._scene.flags.copy()
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = 1
        self._scene.flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = 1
        try:
            rgb = self._draw().astype(np.int64)
        finally:
            np.copyto(self._scene.flags, flags)
        segid = rgb[..., 0] + (rgb[..., 1] << 8) + (rgb[..., 2] << 16)  # 0 = background, else geom segid + 1
        lookup = np.full(self._scene.ngeom + 1, -1, dtype=np.int32)
        for g in self._scene.geoms[: self._scene.ngeom]:
            if g.segid >= 0 and g.objtype == int(mujoco.mjtObj.mjOBJ_GEOM):
                lookup[g.segid + 1] = g.objid
        return lookup[np.clip(segid, 0, self._scene.ngeom)][::-1].copy()

    def intrinsics(self) -> np.ndarray:
        """Pinhole intrinsics ``K`` ``(3, 3)`` in pixels of the output image (see the module docstring)."""
        return fovy_to_intrinsics(self._fovy, self.height, self.width)

    def extrinsics(self) -> np.ndarray:
        """World -> camera transform ``(4, 4)``, OpenCV axes, from MuJoCo's camera pose for the current ``data``.

        Fixed cameras may move with the bodies they are attached to, so this reads the pose MuJoCo computes in
        ``mjv_updateScene`` (the mean of the two stereo eyes of ``scene.camera``) rather than caching it.
        """
        mujoco.mjv_updateCamera(self.model, self.data, self._mjv_camera, self._scene)
        eyes = self._scene.camera
        pos = 0.5 * (np.asarray(eyes[0].pos) + np.asarray(eyes[1].pos))
        forward = 0.5 * (np.asarray(eyes[0].forward) + np.asarray(eyes[1].forward))
        up = 0.5 * (np.asarray(eyes[0].up) + np.asarray(eyes[1].up))
        return pose_to_extrinsics(pos, forward, up)

    def project(self, points_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project world points ``(..., 3)`` to pixels ``(..., 2)`` (u right, v down) and depths ``(...,)``."""
        return project_points(points_world, self.intrinsics(), self.extrinsics())

    def close(self) -> None:
        """Release this renderer's render context, freed with the last renderer sharing it (idempotent; the shared GL
        context stays for other renderers)."""
        if self._context is not None:
            shared = _RENDER_CONTEXTS[self._key]
            shared[1] -= 1
            if shared[1] == 0:
                self._gl.make_current()
                self._context.free()
                del _RENDER_CONTEXTS[self._key]
            self._context = None

    def __enter__(self) -> FastRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
