"""The CAS 3.0 server front (Apereo CAS Protocol 3.0), framework-free like `idhub.oidc`.

- `services`: the registry of CAS services and the rules matching a `service` URL to one;
- `tickets`: service, proxy and proxy-granting tickets (random, single use, bound to a service,
  stored through a port so any replica validates what another issued);
- `attributes`: what a service learns about the person (protocol 3.0 `cas:attributes`);
- `responses`: the 1.0 text, 2.0/3.0 XML and JSON answers;
- `server`: the validation and proxy endpoints' logic, proxy callbacks included;
- `logout`: single logout, the `logoutRequest` each participating service receives.

Which person is signed in, consent and logout are the sign-in core's (`core/signin.py`).
"""
