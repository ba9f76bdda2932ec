"""The agent: an LLM that explains events and answers questions with claims, each checked by the verifier
against the evidence it cites. The flows around it are assembled in ``anomalens.pipelines``."""
