"""Framework adapters: one module per agent framework, each installed with its extra
(`tripwire-guardrail[langgraph]`, `[openai-agents]`, `[autogen]`, `[crewai]`).

Each adapter guards the framework's model calls and tool calls through the framework's own extension points,
maps a team's agents to `agent_id`s, and on a kill ends the run through the framework's own termination path,
so the caller gets `SessionKilled` and the framework neither retries it nor shows it to the model.
"""
