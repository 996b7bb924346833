"""The device agent: ``srnas device serve`` on the machine a model will run on, measuring for a pipeline elsewhere.

- :mod:`~srnas.agent.handlers`: a request in, this project's own measurement run here, the figure and its spread out;
- :mod:`~srnas.agent.server`: the HTTP server (token, request size limit, one measurement at a time, working folder).

The client side is :mod:`srnas.runtimes.remote`; what requests carry, :mod:`srnas.latency.wire`.
"""
