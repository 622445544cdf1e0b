"""warmroute: a self-hosted LLM API with prompt caching and conversation-sticky routing."""

__version__ = "0.1.0"
