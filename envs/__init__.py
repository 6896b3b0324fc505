"""Gymnasium environments over frozen-denoiser rollouts (issue #4: not built yet).

The package exists so the project layout is stable; `import envs` registers nothing today.
"""
