"""Protein families: the alignment reader and identity split (`alignment`), and the family oracle that scores
designed sequences (`potts`, `hmm`, `oracle`; `python -m aop_ray.protein.oracle` builds one). The task itself,
`tasks.protein.Protein`, sits with the other tasks: the task registry imports every task.
"""
