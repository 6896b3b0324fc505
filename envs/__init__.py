"""Gymnasium environments over frozen-denoiser rollouts: `import envs` registers them.

    aop/Unmask-v0   pick the next position to unmask; the frozen denoiser fills it
                    (`envs.unmask.UnmaskEnv`; natively batched: `envs.unmask.UnmaskVectorEnv`)

Agents that play it with the heuristics or a learned policy: `envs.agents`.
"""

import gymnasium

gymnasium.register(
    id="aop/Unmask-v0",
    entry_point="envs.unmask:UnmaskEnv",
    vector_entry_point="envs.unmask:UnmaskVectorEnv",
)
