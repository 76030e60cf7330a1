"""The demo refund agent: the Tourniquet runtime, a fake model, a fake payments service that misbehaves on demand."""
