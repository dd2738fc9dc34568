"""An agent that uses the explainable multimodal engine as a tool.

    python examples/agent_tool.py                 # the tool call an agent makes, offline
    python examples/agent_tool.py --agent         # a LlamaIndex ReActAgent deciding to call it

The engine indexes the demo folder bundled with the package and answers with SmolLM2-135M-Instruct (offline). For the agent
itself, pass a capable chat LLM in production (e.g. a served Qwen or Llama): a 135M model often fails to
follow the ReAct format, and the agent then reports that instead of calling the tool.
"""

import argparse
import asyncio
import tempfile
from pathlib import Path

from mmrag_agent.data import demo_docs
from mmrag_agent.engine import MMRAGQueryEngine
from mmrag_agent.indexing import build_index

parser = argparse.ArgumentParser()
parser.add_argument("--agent", action="store_true", help="run a ReActAgent with the offline SmolLM2 as its LLM")
parser.add_argument("--question", default="How did revenue change over the year, and which chart shows it?")
args = parser.parse_args()

index = build_index(demo_docs(), store=Path(tempfile.mkdtemp()) / "store", show_progress=False)
engine = MMRAGQueryEngine.from_defaults(index, model="smollm2", keep=4, max_new_tokens=160)
tool = engine.as_tool()
print(f"tool {tool.metadata.name!r}: {tool.metadata.description}\n")

if not args.agent:
    output = tool.call(args.question)  # exactly what an agent's tool call runs
    explanation = output.raw_output.metadata["explanation"]
    print("answer:", explanation.answer)
    print("cited:", [c.source for c in explanation.cited])
    print("reasoning:", explanation.reasoning[:300])
else:
    from llama_index.core.agent.workflow import ReActAgent

    from mmrag_agent.models.llm import TransformersLLM

    agent = ReActAgent(tools=[tool], llm=TransformersLLM(model="smollm2", max_new_tokens=200))

    async def ask_agent():
        return await agent.run(user_msg=args.question, max_iterations=4)

    try:
        print("agent:", asyncio.run(ask_agent()))
    except Exception as exc:  # noqa: BLE001 - a small model breaking the ReAct format is the expected failure
        print(f"the agent LLM did not complete the ReAct loop ({type(exc).__name__}: {exc}); use a capable chat LLM")
