"""twistd plugin for the witness, apart from the gateway's so another team can run it alone."""

from twisted.application.service import ServiceMaker

witness = ServiceMaker("sealgate-witness", "sealgate.witness.tap", "C2SP tlog-witness for sealgate logs",
                       "sealgate-witness")
