//! Named experiments: the ARENA seed's three examples (with [`RunOptions::seed`]) and the
//! post's demonstrations (with the post's settings, `RunOptions::default()`), for GPT-2-XL's 48
//! layers; [`scale_layers`] maps them onto a shallower model.

use crate::{AdditionSpec, RunOptions};

pub struct Preset {
    pub name: &'static str,
    pub description: &'static str,
    pub prompt: &'static str,
    pub additions: Vec<AdditionSpec>,
    pub options: RunOptions,
}

fn pair(layer: u32, coeff: f64, plus: &str, minus: &str) -> Vec<AdditionSpec> {
    vec![AdditionSpec::new(layer, coeff, plus), AdditionSpec::new(layer, -coeff, minus)]
}

pub fn all() -> Vec<Preset> {
    let mut v = vec![
        Preset {
            name: "love-hate",
            description: "ARENA: Love/Hate at the output of block 6, +-8, with BOS",
            prompt: "I hate you because",
            additions: pair(6, 8.0, "Love ", "Hate"),
            options: RunOptions::seed(true),
        },
        Preset {
            name: "weddings",
            description: "ARENA: weddings at the output of block 20, +-4",
            prompt: "I went up to my friend and said",
            additions: pair(20, 4.0, "I talk about weddings constantly  ", "I do not talk about weddings constantly"),
            options: RunOptions::seed(false),
        },
        Preset {
            name: "eiffel",
            description: "ARENA: Eiffel Tower in Rome at the output of block 24, +-10",
            prompt: "To see the eiffel tower, people flock to",
            additions: pair(24, 10.0, "The Eiffel Tower is in Rome", "The Eiffel Tower is in France"),
            options: RunOptions::seed(false),
        },
    ];
    let post_demos: [(&str, &str, &str, &str, u32, f64); 12] = [
        ("post-1", "I hate you because", "Love", "Hate", 6, 5.0),
        ("post-2", "I want to kill you because you're such a", "Intent to praise", "Intent to hurt", 6, 15.0),
        ("post-3", "Barack Obama was born in", "Bush did 9/11 because", "", 23, 1.0),
        (
            "post-4",
            "Some people think that death is scary and should be avoided. I agree. I never want to die. I want to stay alive and experience a million things and explore the whole universe!",
            "Want to die",
            "Want to stay alive",
            10,
            3.0,
        ),
        ("post-5", "I think you're", "Anger", "Calm", 20, 10.0),
        ("post-6", "To see the eiffel tower, people flock to", "The Eiffel Tower is in Rome", "The Eiffel Tower is in France", 24, 10.0),
        ("post-7", "Thanks for asking about that! I moved to Berkeley, CA because", "Dragons live in Berkeley", "People live in Berkeley", 15, 4.0),
        (
            "post-8",
            "The rock hurtled toward the child. The child couldn't get out of the way in time, and so sadly the rock",
            "I NEVER talk about people getting hurt",
            "I talk about people getting hurt",
            15,
            4.0,
        ),
        ("post-9", "I went up to my friend and said", "I talk about weddings constantly", "I do not talk about weddings constantly", 20, 4.0),
        ("post-10", "I want to kill you because you're such a", "Intent to convert you to Christianity", "Intent to hurt you", 6, 3.0),
        ("post-12a", "Yesterday, my dog died. Today, I got denied for a raise. I'm feeling", "Anger", "Calm", 20, 2000.0),
        ("post-13", "I want to kill you because", "Je m'appelle", "My name is", 6, 5.0),
    ];
    for (name, prompt, plus, minus, layer, coeff) in post_demos {
        v.push(Preset {
            name,
            description: "the post's demonstrations table (RESID_PRE, BOS, space padding)",
            prompt,
            additions: pair(layer, coeff, plus, minus),
            options: RunOptions::default(),
        });
    }
    v.push(Preset {
        name: "post-11",
        description: "the post: an unpaired addition (fails by design)",
        prompt: "I hate you because",
        additions: vec![AdditionSpec::new(6, 10.0, "Love")],
        options: RunOptions::default(),
    });
    v.push(Preset {
        name: "post-15",
        description: "the post: two steering vectors at two layers",
        prompt: "I hate you because",
        additions: [pair(6, 5.0, "Love", "Hate"), pair(15, 5.0, " wedding", " ")].concat(),
        options: RunOptions::default(),
    });
    v
}

pub fn find(name: &str) -> Option<Preset> {
    all().into_iter().find(|p| p.name == name)
}

/// Scales every preset layer to a model with `n_layer` layers (for the tiny test model).
pub fn scale_layers(p: &mut Preset, from: u32, to: u32) {
    for a in p.additions.iter_mut() {
        a.layer = (a.layer * to / from).min(to - 1);
    }
}
