"""The prose the simulated model "generates".

Output is a walk through this text's token ids, so every stream detokenizes to readable English
in whatever vocabulary the served model uses. Sentences are kept plain ASCII so that any offset
the walk starts from lands on whole tokens.
"""

CORPUS = """\
A gateway sits between the people who ask questions and the engines that answer them. It \
accepts a request, decides where it should go, and carries the answer back without adding \
delay of its own. The best gateways are nearly invisible: when they work, nobody thinks about \
them at all.

Inference engines are expensive machines. Every second a graphics card spends waiting for \
input is a second of money burned, so the gateway tries to keep each engine busy without \
drowning it. It watches how many requests are running, how long the queue has grown, and how \
much of the cache is still warm. Then it sends the next request to the engine most likely to \
answer it quickly.

A shepherd does much the same work on a hillside. The flock moves slowly and wants to \
scatter. The shepherd walks behind it, turns a stray back toward the others, and keeps an eye \
on the weather. Nobody asks the sheep to understand the plan. They only need to arrive at the \
pasture before dark.

Tokens leave the engine one at a time, like drops from a slow tap. The gateway turns them back \
into words, checks whether a stop sequence has appeared, and forwards the text to the client \
as soon as it is safe to do so. If the client hangs up halfway through, the gateway tells the \
engine to stop at once, because nobody will read the rest of the answer.

Caching is the quiet trick behind fast responses. When many requests begin with the same long \
instructions, the engine can remember the work it already did for that prefix and skip it the \
next time. Sending similar requests to the same engine therefore saves time, while spreading \
them across every engine wastes the memory each one has built up.

Failures are part of the job. An engine may run out of memory, a network link may drop, or a \
process may simply vanish in the middle of a sentence. A careful gateway notices quickly, \
reports a clear error instead of waiting forever, and stops sending new work to the machine \
that failed until it has proved itself healthy again.

Measuring all of this takes patience. The time to the first token tells you how long people \
stare at an empty screen. The time between tokens tells you whether the answer reads smoothly \
or stutters. Throughput tells you how many people you can serve at once. A good benchmark \
reports all three, and it runs long enough for the numbers to settle.

In the evening the valley grows quiet. The engines cool down, the queues drain, and the logs \
record a day of ordinary work. Tomorrow the traffic will come back, a little heavier than \
today, and the gateway will be ready for it.
"""
