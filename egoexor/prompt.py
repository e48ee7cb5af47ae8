"""The instruction text and the conversation template, exactly as the reference writes them.

Training (``preprocess_v1``) and inference use the vicuna_v1 template::

    {SYSTEM} USER: <image>\\n{SCENE_GRAPH_PROMPT} ASSISTANT: {answer}</s>

The reference's inference code used the sample's own role names instead (``human:`` / ``gpt:``),
a train/test mismatch; ``roles="reference_inference"`` reproduces it.
"""

from __future__ import annotations

from typing import Literal

IMAGE_PLACEHOLDER = "<image>"

#: The id the processor writes into visual-token positions: out of any vocabulary (the reference's
#: ``IMAGE_TOKEN_INDEX``); the model embeds a real id there and overwrites the embedding.
IMAGE_TOKEN_ID = -200
#: The label of every position that is not supervised (prompt, visual tokens, padding).
IGNORE_INDEX = -100

#: The human turn's instruction (reference ``scene_graph_templates.py``), verbatim: it spells
#: ``anaesthetist``, ``close to`` and ``lying on`` and omits ``microscope`` and ``syringe``,
#: unlike the answers; kept as is because the released model was trained on it.
SCENE_GRAPH_PROMPT = (
    "Entities: [assistant, anaesthetist, circulator, head surgeon, operating table, operating room, "
    "instrument table, antiseptic, anesthesia equipment, bin, body marker, cotton, gloves, health monitor, "
    "instruments, microscope controller, microscope eye, microscope screen, needle, patient, scalpel, scissors, "
    "forceps, curette, tissue mark, tissue paper, ultrasound gel, ultrasound machine, ultrasound probe, "
    "ultrasound screen, unsterile instruments, vertebrae, herbal disk, dressing material]. Predicates: "
    "[disinfection, close to, touching, cutting, holding, lying on, manipulating, preparing, scanning, "
    "positioning, controlling, looking, inserting, injecting, dropping, applying, dressing, entering, removing, "
    "aspirating, wearing, anaesthetising]. Given the following scene graph memory representation, generate a "
    "scene graph for timepoint T. The output should strictly be a list of triplets, each in the format "
    '"entity1,entity2,predicate;". Do not provide a narrative or descriptive text.'
)

#: The human turn of every sample.
HUMAN_TURN = f"{IMAGE_PLACEHOLDER}\n{SCENE_GRAPH_PROMPT}"

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

PromptRoles = Literal["train", "reference_inference"]
ROLES: dict[str, tuple[str, str]] = {"train": ("USER", "ASSISTANT"), "reference_inference": ("human", "gpt")}


def chat_prompt(question: str, roles: PromptRoles = "train") -> str:
    """The text the model reads before its answer: ``{SYSTEM} USER: {question} ASSISTANT:``.

    The answer follows after one space and ends with the EOS token.
    """
    if roles not in ROLES:
        raise ValueError(f"unknown prompt roles {roles!r}; choose one of {', '.join(ROLES)}")
    user, assistant = ROLES[roles]
    return f"{SYSTEM} {user}: {question} {assistant}:"
