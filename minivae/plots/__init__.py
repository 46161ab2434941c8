"""matplotlib behind the optional plot extra."""
