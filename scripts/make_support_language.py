"""Generate the built-in ``support-language`` task: route a support ticket to the desk that speaks its language.

Seeded and deterministic: ``python scripts/make_support_language.py`` rewrites
``src/slmops/evaluate/datasets/support_language_{train,test}.jsonl`` byte for byte. Every ticket
is a hand-written template (12 per language: English, French, Spanish) filled with
slots (product, order number, days or hours). Per language, 9 templates make the training
split and 3 other templates the test split, so no test sentence shape is seen in training.
Each record carries the instruction both teacher and student see, and the gold label.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 20251129
TRAIN_PER_LABEL = 75
TEST_PER_LABEL = 25
TEST_TEMPLATES = 3
INSTRUCTION = "Which language is this support ticket written in? Route it to that desk."
OUT = Path(__file__).resolve().parent.parent / "src" / "slmops" / "evaluate" / "datasets"

# Greetings and sign-offs around each ticket (an empty string: none).
FRAMES: dict[str, tuple[list[str], list[str]]] = {
    "english": (["", "Hello,", "Hi,", "Good morning,"], ["", "Thanks.", "Thank you, Anna", "Best regards, Tom"]),
    "french": (["", "Bonjour,", "Salut,", "Bonsoir,"], ["", "Merci.", "Merci beaucoup, Claire", "Cordialement, Luc"]),
    "spanish": (["", "Hola,", "Buenos días,", "Buenas tardes,"], ["", "Gracias.", "Muchas gracias, Lucía",
                                                                   "Saludos, Carlos"]),
}

# {p}: the customer's product as the subject of the sentence; {n}: order number; {d}: a count.
LANGUAGES: dict[str, tuple[list[str], list[str]]] = {
    "english": (
        ["my laptop", "my phone", "my printer", "my coffee machine", "my camera", "my tablet", "my router", "my TV"],
        [
            "{P} stopped working after {d} days.",
            "{P} will not turn on anymore. What should I do?",
            "Order {n} still has not arrived after {d} days.",
            "I was charged twice for order {n}. Please refund one payment.",
            "How do I reset my password? I cannot log in to my account.",
            "The screen of {p} flickers all the time.",
            "I want to return {p} and get my money back.",
            "Can you change the delivery address of order {n}?",
            "{P} makes a strange noise. Is the warranty still valid?",
            "Please cancel order {n}, I do not need it anymore.",
            "The invoice for order {n} shows the wrong amount.",
            "The battery of {p} is empty after {d} hours.",
        ],
    ),
    "french": (
        ["mon ordinateur portable", "mon téléphone", "mon imprimante", "ma machine à café", "mon appareil photo",
         "ma tablette", "mon routeur", "ma télévision"],
        [
            "{P} ne fonctionne plus depuis {d} jours.",
            "{P} ne s'allume plus. Que dois-je faire ?",
            "Ma commande {n} n'est toujours pas arrivée après {d} jours.",
            "J'ai été débité deux fois pour la commande {n}. Merci de rembourser un paiement.",
            "Comment réinitialiser mon mot de passe ? Je n'arrive pas à me connecter à mon compte.",
            "L'écran de {p} clignote tout le temps.",
            "Je voudrais retourner {p} et être remboursé.",
            "Pouvez-vous changer l'adresse de livraison de la commande {n} ?",
            "{P} fait un bruit étrange. La garantie est-elle encore valable ?",
            "Merci d'annuler la commande {n}, je n'en ai plus besoin.",
            "La facture de la commande {n} indique un mauvais montant.",
            "La batterie de {p} est vide au bout de {d} heures.",
        ],
    ),
    "spanish": (
        ["mi portátil", "mi teléfono", "mi impresora", "mi cafetera", "mi cámara", "mi tableta", "mi router",
         "mi televisor"],
        [
            "{P} dejó de funcionar hace {d} días.",
            "{P} ya no enciende. ¿Qué debo hacer?",
            "Mi pedido {n} todavía no ha llegado después de {d} días.",
            "Me cobraron dos veces el pedido {n}. Por favor, devuélvanme un pago.",
            "¿Cómo restablezco mi contraseña? No puedo iniciar sesión en mi cuenta.",
            "La pantalla de {p} parpadea todo el tiempo.",
            "Quiero devolver {p} y recibir un reembolso.",
            "¿Pueden cambiar la dirección de entrega del pedido {n}?",
            "{P} hace un ruido extraño. ¿Todavía tiene garantía?",
            "Por favor, cancelen el pedido {n}, ya no lo necesito.",
            "La factura del pedido {n} muestra un importe incorrecto.",
            "La batería de {p} se agota después de {d} horas.",
        ],
    ),
}


def fill(template: str, label: str, rnd: random.Random) -> str:
    p = rnd.choice(LANGUAGES[label][0])
    body = template.format(p=p, P=p[0].upper() + p[1:], n=rnd.randint(10000, 99999), d=rnd.randint(2, 14))
    greetings, closings = FRAMES[label]
    return " ".join(part for part in (rnd.choice(greetings), body, rnd.choice(closings)) if part)


def tickets(templates: list[str], label: str, count: int, rnd: random.Random, seen: set[str]) -> list[str]:
    """``count`` distinct tickets, cycling through ``templates``."""
    out: list[str] = []
    for _ in range(100 * count):
        text = fill(templates[len(out) % len(templates)], label, rnd)
        if text not in seen:
            seen.add(text)
            out.append(text)
            if len(out) == count:
                return out
    raise SystemExit(f"cannot make {count} distinct {label} tickets from {len(templates)} templates")


def build() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    rnd = random.Random(SEED)
    train: list[dict[str, str]] = []
    test: list[dict[str, str]] = []
    seen: set[str] = set()
    for label, (_, templates) in LANGUAGES.items():
        order = rnd.sample(range(len(templates)), len(templates))
        held_out = [templates[i] for i in sorted(order[:TEST_TEMPLATES])]
        kept = [templates[i] for i in sorted(order[TEST_TEMPLATES:])]
        for split, chosen, count in ((train, kept, TRAIN_PER_LABEL), (test, held_out, TEST_PER_LABEL)):
            split += [{"prompt": f"{INSTRUCTION}\n\nTicket: {t}", "answer": label}
                      for t in tickets(chosen, label, count, rnd, seen)]
    rnd.shuffle(train)
    rnd.shuffle(test)
    return train, test


def main() -> None:
    train, test = build()
    for name, records in (("train", train), ("test", test)):
        path = OUT / f"support_language_{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        print(f"wrote {len(records)} records to {path}")


if __name__ == "__main__":
    main()
