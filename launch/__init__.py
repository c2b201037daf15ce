"""Cluster launch through submitit: Slurm jobs and job arrays, preemption-safe, plus a local Slurm for tests.

    cli.py          `sparsetrain launch` / `sparsetrain sweep` argument parsing
    submit.py       executors from the `launch:` config section, validation, submission, waiting
    job.py          PipelineJob, the Checkpointable each task runs (preemption sequence in its docstring)
    sweep.py        grid expansion, job arrays, sweep.json and the Pareto plot
    dry_run.py      sbatch script, world size and pruning plan without submitting
    local_slurm.sh  Slurm on this machine: one node, or N in network namespaces (start|stop|status)
"""
