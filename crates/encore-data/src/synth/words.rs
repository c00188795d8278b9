//! Word lists and name makers of the synthetic world: genre names, lyrical-theme vocabularies
//! (real English words, so a BERT tokenizer sees ordinary input), common filler words, and an
//! invented-word generator for artist, album and song names.

use rand::Rng;

/// Genre names, in order of (Zipf-like) genre size. Worlds with more genres than this list
/// name the rest `genre-25`, `genre-26`, ...
pub(crate) const GENRE_NAMES: &[&str] = &[
    "pop",
    "rock",
    "electronic",
    "hip-hop",
    "indie",
    "metal",
    "folk",
    "jazz",
    "country",
    "rnb",
    "punk",
    "classical",
    "blues",
    "reggae",
    "soul",
    "ambient",
    "techno",
    "house",
    "latin",
    "funk",
    "gospel",
    "disco",
    "grunge",
    "trap",
];

/// Lyrical themes: a name and its vocabulary. Vocabularies overlap a little on purpose (a
/// "neon" night and a "neon" city), as real topics do.
pub(crate) const THEMES: &[(&str, &[&str])] = &[
    (
        "love",
        &[
            "love", "heart", "kiss", "darling", "forever", "tender", "embrace", "sweet", "honey",
            "hold", "adore", "desire", "lover", "touch", "warm", "together", "baby", "devotion",
            "promise", "yours", "beloved", "cherish", "passion", "romance", "caress", "dear",
            "soulmate", "ring", "wedding", "always",
        ],
    ),
    (
        "heartbreak",
        &[
            "tears",
            "goodbye",
            "broken",
            "lonely",
            "cry",
            "alone",
            "gone",
            "memory",
            "regret",
            "fading",
            "empty",
            "pain",
            "lost",
            "apart",
            "cold",
            "rain",
            "silence",
            "leaving",
            "sorrow",
            "ache",
            "shattered",
            "ghost",
            "mistake",
            "letter",
            "wound",
            "bleeding",
            "farewell",
            "yesterday",
            "distance",
            "grief",
        ],
    ),
    (
        "party",
        &[
            "dance",
            "party",
            "night",
            "club",
            "drinks",
            "lights",
            "shake",
            "floor",
            "weekend",
            "loud",
            "celebrate",
            "bass",
            "crowd",
            "jump",
            "wild",
            "fun",
            "champagne",
            "groove",
            "beat",
            "glitter",
            "bounce",
            "tonight",
            "shots",
            "neon",
            "friday",
            "hands",
            "sweat",
            "move",
            "spin",
            "rhythm",
        ],
    ),
    (
        "road",
        &[
            "highway",
            "road",
            "miles",
            "wheels",
            "engine",
            "drive",
            "journey",
            "wander",
            "horizon",
            "dust",
            "motel",
            "freedom",
            "map",
            "truck",
            "gasoline",
            "westbound",
            "border",
            "ticket",
            "train",
            "station",
            "compass",
            "travel",
            "asphalt",
            "rearview",
            "exit",
            "runaway",
            "nomad",
            "crossroads",
            "gravel",
            "route",
        ],
    ),
    (
        "rebellion",
        &[
            "fight",
            "fire",
            "rise",
            "riot",
            "anger",
            "chains",
            "revolution",
            "scream",
            "burn",
            "rage",
            "enemy",
            "power",
            "resist",
            "system",
            "flag",
            "streets",
            "blood",
            "fist",
            "breaking",
            "truth",
            "liars",
            "army",
            "march",
            "storm",
            "rebel",
            "defy",
            "uprising",
            "barricade",
            "noise",
            "spark",
        ],
    ),
    (
        "nature",
        &[
            "river", "mountain", "forest", "sky", "wind", "sun", "moon", "stars", "ocean", "tree",
            "flower", "valley", "snow", "meadow", "bird", "stone", "earth", "dawn", "leaves",
            "rainbow", "spring", "summer", "autumn", "winter", "field", "lake", "cloud", "thunder",
            "seed", "roots",
        ],
    ),
    (
        "faith",
        &[
            "heaven",
            "pray",
            "grace",
            "soul",
            "angel",
            "light",
            "holy",
            "believe",
            "spirit",
            "glory",
            "salvation",
            "mercy",
            "shepherd",
            "chapel",
            "hymn",
            "blessing",
            "miracle",
            "faith",
            "cross",
            "amen",
            "redeemer",
            "eternal",
            "psalm",
            "prophet",
            "altar",
            "kneel",
            "sacred",
            "hallelujah",
            "savior",
            "trust",
        ],
    ),
    (
        "city",
        &[
            "city",
            "streets",
            "subway",
            "neon",
            "skyline",
            "tower",
            "traffic",
            "concrete",
            "downtown",
            "avenue",
            "corner",
            "apartment",
            "sirens",
            "taxi",
            "crowd",
            "rooftop",
            "block",
            "alley",
            "bridge",
            "billboard",
            "metro",
            "boulevard",
            "elevator",
            "window",
            "lamp",
            "fog",
            "district",
            "harbor",
            "pavement",
            "skyscraper",
        ],
    ),
    (
        "money",
        &[
            "money", "gold", "diamond", "cash", "rich", "bank", "hustle", "chain", "dollar",
            "luxury", "million", "boss", "empire", "wealth", "mansion", "paper", "profit", "deal",
            "stack", "jewels", "hustler", "fortune", "bills", "credit", "yacht", "throne", "crown",
            "grind", "paid", "vault",
        ],
    ),
    (
        "dreams",
        &[
            "dream",
            "sleep",
            "wonder",
            "float",
            "imagine",
            "magic",
            "clouds",
            "fly",
            "wish",
            "starlight",
            "shadow",
            "whisper",
            "illusion",
            "mirror",
            "fantasy",
            "drift",
            "lullaby",
            "wings",
            "silver",
            "moonbeam",
            "echo",
            "mist",
            "vision",
            "secret",
            "wonderland",
            "slumber",
            "cosmic",
            "galaxy",
            "orbit",
            "stardust",
        ],
    ),
    (
        "home",
        &[
            "home",
            "family",
            "mother",
            "father",
            "kitchen",
            "porch",
            "childhood",
            "brother",
            "sister",
            "town",
            "garden",
            "hometown",
            "table",
            "supper",
            "chair",
            "photograph",
            "grandma",
            "yard",
            "fence",
            "barn",
            "harvest",
            "church",
            "letters",
            "fireplace",
            "blanket",
            "neighbors",
            "sunday",
            "holiday",
            "cradle",
            "doorstep",
        ],
    ),
    (
        "sea",
        &[
            "sea",
            "waves",
            "sailor",
            "ship",
            "harbor",
            "tide",
            "shore",
            "anchor",
            "island",
            "salt",
            "storm",
            "mermaid",
            "lighthouse",
            "deep",
            "sails",
            "captain",
            "coral",
            "current",
            "voyage",
            "beach",
            "sand",
            "seagull",
            "deck",
            "wreck",
            "dolphin",
            "horizon",
            "pearl",
            "bay",
            "drown",
            "compass",
        ],
    ),
    (
        "youth",
        &[
            "young",
            "school",
            "summer",
            "friends",
            "reckless",
            "teenage",
            "skateboard",
            "crush",
            "graduation",
            "locker",
            "bicycle",
            "carefree",
            "radio",
            "sneakers",
            "hallway",
            "curfew",
            "diary",
            "bedroom",
            "poster",
            "mixtape",
            "gang",
            "skinny",
            "dare",
            "prom",
            "yearbook",
            "forever",
            "party",
            "rebel",
            "wild",
            "freedom",
        ],
    ),
    (
        "night",
        &[
            "midnight",
            "dark",
            "shadows",
            "moonlight",
            "stars",
            "candle",
            "insomnia",
            "owl",
            "dusk",
            "velvet",
            "whisper",
            "neon",
            "lonely",
            "hours",
            "clock",
            "lamp",
            "echo",
            "silhouette",
            "secrets",
            "sleepless",
            "eclipse",
            "nocturne",
            "raven",
            "ghost",
            "twilight",
            "dim",
            "black",
            "haze",
            "still",
            "streetlight",
        ],
    ),
    (
        "time",
        &[
            "time",
            "clock",
            "years",
            "seconds",
            "hours",
            "past",
            "future",
            "moment",
            "memories",
            "aging",
            "history",
            "forever",
            "yesterday",
            "tomorrow",
            "calendar",
            "hourglass",
            "season",
            "decades",
            "ticking",
            "again",
            "wait",
            "remember",
            "begin",
            "end",
            "ancient",
            "eternity",
            "minute",
            "late",
            "someday",
            "chapter",
        ],
    ),
    (
        "war",
        &[
            "soldier",
            "battle",
            "gun",
            "trench",
            "bullet",
            "general",
            "medal",
            "grave",
            "victory",
            "defeat",
            "sword",
            "shield",
            "cannon",
            "captain",
            "enemy",
            "border",
            "helmet",
            "siege",
            "fallen",
            "hero",
            "veteran",
            "wound",
            "bomb",
            "sirens",
            "frontline",
            "command",
            "duty",
            "honor",
            "ashes",
            "peace",
        ],
    ),
];

/// Common English words that carry no theme: most of the words of every lyric, most frequent
/// first (sampled with Zipf weights).
pub(crate) const FILLER: &[&str] = &[
    "the", "i", "you", "and", "a", "to", "me", "my", "it", "in", "we", "oh", "your", "on", "is",
    "all", "don't", "that", "so", "i'm", "be", "for", "yeah", "know", "just", "with", "no", "like",
    "what", "can't", "now", "when", "up", "down", "never", "this", "go", "baby", "let", "get",
    "got", "can", "say", "come", "out", "one", "see", "way", "feel", "want", "there", "take",
    "make", "back", "will", "where", "how", "away", "give", "are", "our", "was", "every", "been",
    "still", "more", "from", "here", "need", "right", "through", "tell", "ever", "into", "keep",
    "only", "find", "inside", "again", "around", "nothing", "until", "better", "hey",
];

const ONSETS: &[&str] = &[
    "b", "br", "c", "d", "dr", "f", "g", "gr", "k", "l", "m", "n", "p", "r", "s", "st", "t", "tr",
    "v", "z", "sh", "th", "ch", "j", "w", "bl", "fl", "kr", "",
];
const VOWELS: &[&str] = &[
    "a", "e", "i", "o", "u", "ai", "ea", "ou", "y", "io", "ae", "ei",
];
const CODAS: &[&str] = &[
    "", "", "", "n", "r", "s", "l", "th", "x", "m", "k", "nd", "sh", "v",
];

/// The name of genre `g` (0-based).
pub(crate) fn genre_name(g: usize) -> String {
    match GENRE_NAMES.get(g) {
        Some(name) => (*name).to_string(),
        None => format!("genre-{}", g + 1),
    }
}

/// An invented, pronounceable word of `syllables` syllables, lower case, ASCII only.
pub(crate) fn invented_word<R: Rng + ?Sized>(rng: &mut R, syllables: usize) -> String {
    let mut w = String::with_capacity(syllables * 4);
    for s in 0..syllables {
        w.push_str(ONSETS[rng.random_range(0..ONSETS.len())]);
        w.push_str(VOWELS[rng.random_range(0..VOWELS.len())]);
        if s + 1 == syllables || rng.random::<f64>() < 0.3 {
            w.push_str(CODAS[rng.random_range(0..CODAS.len())]);
        }
    }
    w
}

/// `word` with its first letter upper-cased (ASCII).
pub(crate) fn capitalise(word: &str) -> String {
    let mut c = word.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

/// A theme vocabulary for theme `h`: the built-in list, or for themes beyond it an invented
/// vocabulary of 30 words drawn from `rng`.
pub(crate) fn theme_vocabulary<R: Rng + ?Sized>(h: usize, rng: &mut R) -> (String, Vec<String>) {
    match THEMES.get(h) {
        Some((name, words)) => (
            (*name).to_string(),
            words.iter().map(|w| (*w).to_string()).collect(),
        ),
        None => {
            let words: Vec<String> = (0..30)
                .map(|_| {
                    let n = rng.random_range(2..=3);
                    invented_word(rng, n)
                })
                .collect();
            (format!("theme-{}", h + 1), words)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn word_lists_are_clean_ascii_without_separators() {
        let all = THEMES
            .iter()
            .flat_map(|(n, w)| std::iter::once(*n).chain(w.iter().copied()))
            .chain(FILLER.iter().copied())
            .chain(GENRE_NAMES.iter().copied());
        for w in all {
            assert!(!w.is_empty());
            assert!(
                w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'\'' || b == b'-'),
                "{w:?}"
            );
        }
        for (name, words) in THEMES {
            assert!(words.len() >= 30, "theme {name} has {} words", words.len());
        }
    }

    #[test]
    fn invented_words_and_names() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..200 {
            let w = invented_word(&mut rng, 2);
            assert!(
                w.len() >= 2 && w.bytes().all(|b| b.is_ascii_lowercase()),
                "{w}"
            );
        }
        assert_eq!(capitalise("neon"), "Neon");
        assert_eq!(capitalise(""), "");
        assert_eq!(genre_name(0), "pop");
        assert_eq!(genre_name(24), "genre-25");
        let (name, words) = theme_vocabulary(16, &mut rng);
        assert_eq!(name, "theme-17");
        assert_eq!(words.len(), 30);
        assert_eq!(theme_vocabulary(0, &mut rng).0, "love");
    }
}
