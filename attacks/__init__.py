"""The attack suite: one attack per file named as the attack, each exporting its ``ENTRY``
(``gkp.foundation.contracts.Attack``: the contract every attack fulfils), found by
``gkp.application.catalog.ATTACKS``. ``attacks.common`` holds what the attacks share beyond the threat
model of ``gkp.foundation.threat``."""
