//! Loop guardrail / circuit breaker (being written).
