"""The attack suite: one attack per file, each exporting its ``ENTRY`` entry (``gkp.foundation.contracts.Attack``:
the contract every attack fulfils), registered in ``gkp.application.catalog.ATTACKS``. ``attacks.common`` holds what
the attacks share beyond the threat model of ``gkp.foundation.threat``."""
