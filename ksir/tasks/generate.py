"""Write ksir's tiny zero-shot task files (`ksir/tasks/data/<task>/<split>.jsonl`).

Every example below was written for ksir (nothing is copied from the real datasets); the files
use exactly the field names, types and splits of the hub datasets that lm-evaluation-harness
reads, so that the harness's own task definitions (prompts, choices, metrics) run on them
unchanged. They exist for offline tests and the demo, not as a benchmark: 20-24 examples per
task cannot separate models. Regenerate with `python -m ksir.tasks.generate` (deterministic).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"

# --- lambada_openai (EleutherAI/lambada_openai, split `test`): {"text"}; the last word is the target.
_LAMBADA_TEMPLATES = [
    "{name} had wanted to see {place} since childhood. For years {pron} saved money, read old guidebooks and "
    "practised the language every evening. When the train finally stopped and the doors opened, {pron} "
    "stepped onto the platform and whispered that {pron} was really in {place}",
    "The {thing} had belonged to {name}'s grandmother. Nobody else in the family wanted it, so it sat in the "
    "attic for a decade. When the museum called and asked about old family objects, {name} climbed the "
    "ladder, wiped off the dust and carried down the {thing}",
    "\"Have you seen my {thing}?\" asked {name}. \"I left it on the kitchen table this morning.\" Her brother "
    "shook his head and kept reading. After searching the whole house, {name} finally found it under the "
    "sofa cushions. She held it up and said, \"Next time, nobody touches my {thing}",
    "Every Sunday {name} walked the dog along the river to {place}. The walk took an hour, and the dog knew "
    "every tree on the way. One Sunday it rained so hard that they stayed home, and the dog sat by the door "
    "all afternoon, waiting to go to {place}",
    "{name} was nervous about the exam. The teacher had said it would cover the chapter about the {thing}, "
    "so {pron} had read that chapter three times. When the papers were handed out, the first question was "
    "indeed about the {thing}",
    "The market was crowded, but {name} only needed one thing: a fresh {thing}. The first stall had sold "
    "out, and the second one was closed. At the far end of the square an old man waved and pointed at his "
    "basket, which held a single {thing}",
]
_LAMBADA_FILLS = [
    {"name": "Maria", "pron": "she", "place": "Lisbon", "thing": "lamp"},
    {"name": "Tomas", "pron": "he", "place": "Vienna", "thing": "clock"},
    {"name": "Aiko", "pron": "she", "place": "Kyoto", "thing": "notebook"},
    {"name": "Daniel", "pron": "he", "place": "Oslo", "thing": "melon"},
]

# --- piqa (baber/piqa, split `validation`): {"goal", "sol1", "sol2", "label"}; label 0/1 = sol1/sol2.
_PIQA = [  # (goal, right solution, wrong solution)
    ("How do I keep bread from going stale quickly?", "Store it in a closed bag at room temperature.",
     "Leave it uncovered on a sunny windowsill."),
    ("To cool a hot drink faster,", "pour it into a wide cup and stir it.", "put a lid on it and wrap it in a towel."),
    ("How can I find a small screw I dropped on the carpet?", "Shine a flashlight low across the carpet.",
     "Turn off all the lights and listen for it."),
    ("To stop a door from squeaking,", "put a drop of oil on the hinges.", "paint the door handle a new colour."),
    ("How do I dry wet shoes overnight?", "Stuff them with newspaper and leave them in a warm room.",
     "Put them in the freezer until morning."),
    ("To make ice cubes that are easy to remove,", "use a flexible silicone tray.", "fill a glass jar and freeze it solid."),
    ("How do I remove a sticker from a glass jar?", "Soak the jar in warm soapy water and peel the sticker.",
     "Rub the sticker with a dry sponge in the dark."),
    ("To keep a cut flower fresh longer,", "trim the stem and put it in clean water.", "lay it on a hot stove."),
    ("How can I carry hot soup to work?", "Pour it into a sealed insulated flask.", "Wrap it in a paper napkin."),
    ("To loosen a tight jar lid,", "run the lid under hot water for a minute.", "put the jar in the fridge overnight."),
    ("How do I keep my phone screen from scratching?", "Use a screen protector and keep keys in another pocket.",
     "Keep it in the same pocket as your keys and coins."),
    ("To mark the page where you stopped reading,", "slip a bookmark between the pages.", "tear the page out of the book."),
    ("How do I water a plant while I am away for a week?",
     "Put one end of a wet string in a water bowl and the other in the soil.", "Pour a bucket of water on it and close the curtains."),
    ("To untangle a knotted necklace,", "loosen the knot gently with two pins.", "pull both ends apart as hard as you can."),
    ("How can I stop a rug from slipping on a wooden floor?", "Put a rubber mat underneath the rug.",
     "Polish the floor under the rug with wax."),
    ("To sharpen a pencil without a sharpener,", "carefully shave the wood away with a knife.",
     "soak the pencil in water for an hour."),
    ("How do I keep cookies crisp?", "Keep them in an airtight tin.", "Store them next to a slice of wet bread."),
    ("To see if an egg is still fresh,", "place it in a bowl of water and check that it sinks.",
     "shake it next to your ear for a minute."),
    ("How do I clean a blender quickly?", "Run it with warm water and a drop of soap.", "Fill it with flour and run it."),
    ("To light a candle with a very short wick,", "use a long match or a lighter held sideways.",
     "blow on the wick until it glows."),
    ("How can I make a room darker for sleeping?", "Hang thick curtains over the window.", "Paint the ceiling bright white."),
    ("To open a stuck zipper,", "rub the teeth with a pencil tip and pull gently.", "cut the zipper pull off."),
    ("How do I keep ants away from the sugar?", "Keep the sugar in a sealed container.",
     "Leave the sugar bowl open on the floor."),
    ("To fold a paper plane that flies far,", "make sharp, even folds and keep the wings level.",
     "crumple the paper into a ball first."),
]

# --- hellaswag (Rowan/hellaswag, split `validation`): the hub row layout, label as a string.
_HELLASWAG = [  # (activity_label, ctx_a, ctx_b, [right ending, three wrong endings])
    ("Making a sandwich", "A man takes two slices of bread out of a bag.", "he",
     ["spreads butter on one slice and adds cheese.", "throws the bread into the swimming pool.",
      "starts running around the track.", "paints the slices blue with a brush."]),
    ("Washing a car", "A woman fills a bucket with soapy water next to a red car.", "she",
     ["dips a sponge in the bucket and scrubs the hood.", "puts the bucket on her head and sings.",
      "drives the car into a lake.", "feeds the water to a dog."]),
    ("Playing the guitar", "A boy sits on a chair holding a guitar.", "he",
     ["tunes the strings and starts to strum a song.", "uses the guitar as a paddle in a canoe.",
      "eats the strings one by one.", "throws the chair out of the window."]),
    ("Brushing teeth", "A girl puts toothpaste on a small toothbrush.", "she",
     ["brushes her teeth in front of the mirror.", "brushes the cat's tail with it.",
      "plants the toothbrush in a flower pot.", "reads the toothbrush like a book."]),
    ("Raking leaves", "A man walks into a yard covered with fallen leaves.", "he",
     ["rakes the leaves into a large pile.", "glues the leaves back onto the trees.",
      "swims across the yard.", "cooks the rake on a grill."]),
    ("Ironing clothes", "A woman sets up an ironing board and plugs in an iron.", "she",
     ["presses a wrinkled shirt until it is smooth.", "irons a slice of pizza.",
      "climbs onto the board and falls asleep on the roof.", "throws the iron to a friend."]),
    ("Shoveling snow", "Snow covers the driveway in front of a house.", "a man",
     ["clears the snow with a shovel.", "sunbathes on the snow in swimwear.",
      "mails the snow to his cousin.", "paints the snow with orange stripes."]),
    ("Baking cookies", "A girl mixes flour, butter and sugar in a bowl.", "she",
     ["rolls the dough into balls and puts them on a tray.", "pours the bowl into the washing machine.",
      "uses the dough to fix a bicycle tire.", "sends the bowl into space."]),
    ("Walking the dog", "A man clips a leash onto a small dog's collar.", "they",
     ["walk out of the door and down the street.", "fly over the rooftops together.",
      "sit inside the fridge for an hour.", "start to play the piano with their feet."]),
    ("Painting a wall", "A woman opens a can of white paint and stirs it.", "she",
     ["rolls the paint evenly across the wall.", "drinks the paint through a straw.",
      "pours the paint into her shoes.", "paints the inside of the can lid only and leaves for good."]),
    ("Changing a tire", "A car with a flat tire is parked on the side of the road.", "a man",
     ["loosens the nuts and lifts the car with a jack.", "inflates the car like a balloon.",
      "lies down on the road and reads a novel.", "sells the tire to a passing horse."]),
    ("Making tea", "A kettle boils on the stove in a small kitchen.", "a woman",
     ["pours the hot water over a tea bag in a cup.", "pours the water into the toaster.",
      "puts the kettle in the garden to grow.", "uses the kettle as a hat."]),
    ("Doing laundry", "A pile of dirty clothes lies next to a washing machine.", "a boy",
     ["loads the clothes into the machine and adds soap.", "burns the clothes in the oven.",
      "wears all the clothes at once and jumps.", "buries the clothes in the sand."]),
    ("Fishing", "A man sits on a dock with a fishing rod.", "he",
     ["casts the line into the water and waits.", "casts the rod into the sky like a kite.",
      "eats the fishing line for lunch.", "swims to the moon with the fish."]),
    ("Planting a tree", "A girl digs a deep hole in the garden.", "she",
     ["places a young tree in the hole and fills it with soil.", "hides her homework in the hole and flies away.",
      "fills the hole with milk.", "sits in the hole and starts to knit a car."]),
    ("Cutting hair", "[title] How to trim your own bangs. [step] Wet your hair and comb the bangs straight down.",
     "[substeps] Then",
     ["cut small amounts with sharp scissors, a little at a time.", "dry your hair with a vacuum cleaner.",
      "shave the back of your head first.", "dye the scissors red before using them."]),
    ("Cleaning windows", "[title] How to clean windows without streaks. [step] Mix water and a little vinegar.",
     "[substeps] Then",
     ["wipe the glass with a clean, dry cloth.", "spread mud over the glass.",
      "break the window and replace it.", "leave the mixture in the sun for a year."]),
    ("Tying shoes", "A child sits on the floor and pulls on a pair of sneakers.", "she",
     ["crosses the laces and ties them into a bow.", "ties the laces to the ceiling fan.",
      "cuts the laces off and eats them.", "throws the sneakers into the soup."]),
    ("Setting the table", "A man places plates on a dining table for dinner.", "he",
     ["puts a fork and a knife next to each plate.", "stacks the plates on the dog.",
      "puts the table on top of the plates.", "puts the forks in the fish tank."]),
    ("Riding a bike", "A woman puts on a helmet next to her bicycle.", "she",
     ["climbs on the bike and pedals down the path.", "rides the helmet down the stairs.",
      "puts the bicycle in her backpack.", "paints the helmet and bakes it."]),
]

# --- winogrande (allenai/winogrande winogrande_xl, split `validation`): sentence with one `_`,
# option1/option2, answer "1"/"2". Twin pairs: swapping one word flips the answer.
_WINOGRANDE = [  # (sentence with {w}, option1, option2, (word for answer 1, word for answer 2))
    ("The suitcase would not fit in the car trunk because the _ was too {w}.", "suitcase", "trunk", ("big", "small")),
    ("Anna lent her umbrella to Beth because _ was going to walk home in the {w}.", "Anna", "Beth", ("sunshine", "rain")),
    ("The glass fell on the pillow and did not break, because the _ was {w}.", "glass", "pillow", ("sturdy", "soft")),
    ("Mark asked Paul for help with the math homework because _ was {w} at math.", "Mark", "Paul", ("bad", "good")),
    ("The soup was cooler than the tea because the _ had been poured {w}.", "soup", "tea", ("earlier", "later")),
    ("The cat chased the mouse across the kitchen until the _ was {w}.", "cat", "mouse", ("tired", "caught")),
    ("Lisa gave her old coat to Emma because _ had {w} coat for the winter.", "Lisa", "Emma", ("a new", "no")),
    ("The book was easier to carry than the lamp because the _ was {w}.", "book", "lamp", ("light", "heavy")),
    ("The candle burned longer than the match because the _ was {w}.", "candle", "match", ("thicker", "thinner")),
    ("Sam could not hear Tom over the music because _ was speaking too {w}.", "Sam", "Tom", ("loudly", "quietly")),
    ("The plant grew better on the windowsill than in the closet because the _ had {w} light.", "windowsill",
     "closet", ("more", "less")),
    ("Nina thanked Olga for the ride because _ had {w} a car.", "Nina", "Olga", ("no", "borrowed")),
]


def _rows() -> dict[str, tuple[str, list[dict]]]:
    rng = random.Random(0)
    lambada = [{"text": t.format(**f)} for t in _LAMBADA_TEMPLATES for f in _LAMBADA_FILLS]
    piqa = []
    for goal, right, wrong in _PIQA:
        label = rng.randint(0, 1)
        sols = (right, wrong) if label == 0 else (wrong, right)
        piqa.append({"goal": goal, "sol1": sols[0], "sol2": sols[1], "label": label})
    hellaswag = []
    for i, (activity, ctx_a, ctx_b, endings) in enumerate(_HELLASWAG):
        order = list(range(4))
        rng.shuffle(order)
        wikihow = ctx_a.startswith("[title]")
        hellaswag.append({
            "ind": i, "activity_label": activity, "ctx_a": ctx_a, "ctx_b": ctx_b,
            "ctx": f"{ctx_a} {ctx_b}".strip(), "endings": [endings[j] for j in order],
            "source_id": f"ksir~{'wikihow' if wikihow else 'activitynet'}_{i}", "split": "val",
            "split_type": "indomain" if i % 2 == 0 else "zeroshot", "label": str(order.index(0)),
        })
    winogrande = [{"sentence": s.format(w=words[a]), "option1": o1, "option2": o2, "answer": str(a + 1)}
                  for s, o1, o2, words in _WINOGRANDE for a in (0, 1)]
    return {"lambada_openai": ("test", lambada), "piqa": ("validation", piqa),
            "hellaswag": ("validation", hellaswag), "winogrande": ("validation", winogrande)}


def write(out_dir: Path = DATA_DIR) -> list[Path]:
    paths = []
    for task, (split, rows) in _rows().items():
        path = out_dir / task / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write():
        print(p)
