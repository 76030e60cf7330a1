"""What the operator and the agent-side runtime share and must compute alike: the redaction of secrets (the
operator's evidence, the runtime's decision traces) and the compensation plan (the worker in the agent's image
executes the plan the operator showed, and both name it by the same hash).

Pure and standard-library only: it imports nothing of the operator or of the runtime, so the runtime, which runs
inside the agents' processes, takes it without the operator's models (its import contract allows only
``domain.names`` of the operator, and this package, which belongs to neither).
"""
