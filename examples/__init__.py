"""Examples of fl-iot's plugins used outside fl-iot."""
