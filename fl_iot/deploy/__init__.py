"""fl-iot on Flower's Deployment Engine: certificates, keys and a loopback deployment.

:mod:`fl_iot.deploy.pki` creates what TLS and SuperNode authentication need,
:mod:`fl_iot.deploy.loopback` starts a SuperLink and SuperNodes on this machine and drives
``flwr run``, and :mod:`fl_iot.deploy.cli` is the ``fl-iot-deploy`` command over both.
``docs/deployment.md`` has the same steps for real machines.
"""
