"""DeepSpeed training: the engine (loop, checkpoints, resume, faults) and what each training adds (trainers)."""
