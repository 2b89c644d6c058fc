/// The generation that most likely started a process that carries no identity of its own (a daemon that wiped its
/// environment): the newest generation that had started by the process's start time, given each generation's start
/// (in the same clock). Nil when none had.
public func likelyGeneration(startedAt processStart: UInt64, generationStarts: [Int: UInt64]) -> Int? {
    generationStarts.filter { $0.value <= processStart }.max { ($0.value, $0.key) < ($1.value, $1.key) }?.key
}
