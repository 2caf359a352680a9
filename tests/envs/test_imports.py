"""The library imports without the simulator extra: only the Meta-World environment and the renderer need mujoco."""

import subprocess
import sys

CHECK = """
import sys
sys.modules["mujoco"] = None  # importing mujoco now raises ImportError, as without the `sim` extra
import lightning_prophrl.callbacks, lightning_prophrl.datamodules, lightning_prophrl.modules, lightning_prophrl.rl
from lightning_prophrl.envs import Prompt
from lightning_prophrl.envs.world_model import WorldModelEnv
from lightning_prophrl.models.prophet import Prophet
try:
    from lightning_prophrl.envs import MetaWorldEnv
except ImportError:
    print("sim needs mujoco")
"""


def test_library_imports_without_mujoco_and_the_simulator_loads_on_first_use():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "sim needs mujoco"


def test_simulator_names_resolve_lazily():
    import lightning_prophrl.envs as envs

    assert envs.MetaWorldEnv.__name__ == "MetaWorldEnv" and callable(envs.project_points)
    assert set(envs._LAZY) <= set(envs.__all__)
