// safetywords.js: the maths of the three safety words of a peer connection,
// and the 2048 words they are drawn from (PROTOCOL.md "Safety words").
//
// A server that wanted to listen in on a call would have to answer each
// browser's DTLS handshake with a certificate of its own, so the two
// browsers would no longer see the same pair of certificate fingerprints.
// The words come from both fingerprints and from a nonce of each side,
// exchanged by commit-then-reveal (wordsexchange.js), so such a server
// cannot search in advance for certificates that give both sides the same
// words: it gets one guess per call.
//
//   1. fingerprint string of a description (descriptionFingerprint): every
//      `a=fingerprint:` value, prefix dropped, trimmed, lower-cased,
//      duplicates dropped, sorted and joined with ",".
//   2. commitment(nonce) = SHA-256(nonce), the 32 raw nonce bytes.
//   3. deriveWords(): HKDF-SHA-256 with salt "earshot/v2/safety-words",
//      IKM = committer's nonce || responder's nonce (32 bytes each), info =
//      committer's fingerprint string + "\n" + responder's (UTF-8), 32 bytes
//      out; bits 0-10, 11-21 and 22-32 (big-endian) index SAFETY_WORDS
//      (2048 distinct lower-case words in code-unit order: 0 is "abacus",
//      2047 "zoom").
//
// No DOM, no storage, nothing logged.

export const SAFETY_WORD_COUNT = 3;
const BITS_PER_WORD = 11;

const LIST = `
abacus able abound achieve acorn act active adapt adept adjust advance advise aerial affable
agile agree aim airport airship airy alder alert alight alive alley almond alpaca alpine amazing
amber amble amiable ample amused amusing analyze anchor anchovy ancient anemone angelic angular
animate answer ant antique appear applaud apple apricot apron apt aqua aquatic arcade arcane
arch arctic ardent arena argyle arise arrange arrive artful artisan ascend ask aspen aspire
assist assured aster astral astute atoll attend attic auburn avenue avid avocado awake aware
awesome awning azalea azure babble babysit badge badger bagel bagpipe bake balance balcony
balloon balmy bandana banjo banner banquet banter bargain barge bark barn barrel barter basic
bask basket bassoon baste bat bathe bathtub baton bay bayou bazaar beach beacon bead beagle
beaker beam bean beanbag bear beckon bee beep beet beetle begin behave beige believe bell bellow
belong beloved bench bend beret berry bicycle big bike bionic biscuit bison bistro blanch
blanket blend blimp blink blithe block blog bloom blossom blue bluff blush boat bobbing bobble
bobcat bold bond bongo bonnet bonny boogie book boom boot bop borrow bottle boulder bounce bound
bouquet bow bowl box braid brainy brake bramble branch brassy brave bray breathe breeze brew
bridge brief brisk broad broil bronze brooch brook broom browse brunch brush bubble bucket
buckle bucolic budding budge budget budgie buff buffalo buggy bugle build bulldog bumble bumpy
bundle bunny buoyant burger burrito burrow bus bustle busy buttery button buzz cabbage cabin
cabinet cable cackle cactus calf call camel camera camp canal canary candid candle candy canoe
canteen canter canvas canyon cap capable caper car caramel caravan care caribou carol carpet
carpool carrot cart carve cascade cashew castle casual cat catchy catfish cave cavern caw cedar
cello centaur central ceramic cereal chair chalet chalky chant chariot charm chart chat cheeky
cheep cheer cheese cheetah chest chew chic chicken chief chili chill chime chip chirp chomp
choose chorus chowder chrome chuckle chummy chunky churn cicada cinema circle citrus city civic
civil clack clamber clamor clang clap classic classy clatter clever click cliff climb clink clip
clock cloud clover clown cluck cluster coach coast coax cobalt cobble cocoa cocoon cod code
coexist coiled collect collie color colt comb comet comfy comical common commute compact compare
compass compete compose compute concert condor conduct confer confide conga conical conjure
connect content coo cook cookie copper coral cordial correct cosmic cottage couch count courtly
cove coy coyote cozy crab crackle cradle craft crag crane crate crawl crayon create creek crepe
cricket crimson crinkle crisp crochet crouch crow crowd crown cruise crumble crunch crystal cub
cubic cuddle cupcake curate curious curl current curtain curved cushion cushy custard custom
cute cycle cymbal cypress dabble dahlia dainty dairy daisy dally dance dandy dangle dapper
dappled daring darling dart dash dazzle debate decent decide deepen deer defrost deft delight
deliver delta deluxe delve demure den denim depart descend desert design desk detour develop
devise devoted dewy dial diary dig digital dimpled dine ding dinghy dingo dinky dip discuss
distant dive dizzy docile dock dodo dog dollop dolphin domed domino donate donut doodle doormat
dotted dove downy doze draft dragon drape draw dream dribble drift drip driven drizzle drowsy
drum duck dune durable dust dutiful dwell dynamic eager eagle earnest earthen earthy easel
eastern eat ebb echo eclipse eddy edit educate eel egret elastic elated elegant elevate elfin
elite elk elm embark emcee emerald emerge eminent emote emu enchant endless engrave enroll epic
equal eraser estuary etch eternal ethical evolve exact excel excited exclaim exhale expand
expert explain explore express fabled falcon famous fan fancy farm faucet fawn feast feather
fedora feisty fence fern ferret ferry fervent festive fetch fiddle fidget field fiery fig figure
film filter finch finesse finish fir firefly fish fit fix fizz fizzle fjord flag flap flashy
fleet flex flicker flip flit float flock floppy floral floss flow flower flowery fluent fluff
flurry flute flutter fly foal foam focus foggy fold folksy follow fond forage forest forge
formal fox foxtrot frame freeze fresh frilly fringed fritter frog frolic frost froth frozen
frugal full fun funky furry fuzzy gab gadget galaxy gallant gallery gallop garage garden garland
garnish gather gaze gazebo gazelle gear gecko gem genial gentle genuine gerbil gesture geyser
giant giddy gifted giggle gilded gingham giraffe give glacier glad glade glance glassy glaze
gleam glean gleeful glen glide glimmer glint glisten glitter global globe glossy glove glow glue
gnome goat goblet golden golf gondola gong good goofy goose gopher gorge gosling gourd grainy
grand grape grassy gray graze great green greet griffin grill grin groove grouse grove grow
guava guess guide guitar gulp gumbo guppy gust gutsy haggle hairpin halcyon hale hallway hamlet
hammer hammock hamster handbag handy hanger happy harbor hardy hare harp harvest hat hatch haul
hawk hazel hazy healthy hear hearth hearty hedge helmet help hen herb herd heroic heron herring
hiccup hidden hide hike hill hip hippo hoist holiday holler hollow holly homey honest honeyed
honk honored hoop hoot hop hope horizon horse hostel hotel hound hover howl huddle hug huge hula
hum humane humble hungry hunker hurdle hurry hush husky hustle hut hydrate icicle iconic icy
ideal idle idyllic igloo iguana imagine imitate immense improve indigo ink inlet inn inner
inquire inspect inspire instant invent iris iron island isle islet ivory jabber jacket jade jam
jangle jar jaunt jay jazzy jest jetty jigsaw jingle jive jog join joke jolly jostle jot journal
journey jovial joyful joyous juggle juice jukebox jumbo jump jungle junior juniper just kayak
kazoo kebab keen kestrel kettle key khaki kind kinetic kingly kiosk kitchen kite kitten kiwi
knead knit knoll knot knowing koala kooky label labor lace ladder ladle ladybug lagoon lake lamb
lamp land lane lantern large lark lasagna lasso lasting latest lather laugh launch laurel lavish
lawful layered leaf lean leap learn leave lecture leek lemming lemon lemur lend lentil leopard
lettuce library light likable lilac lilting lily limber limbo lime linen linger lion listen
lithe little lively living lizard llama loaf lob lobby lobster local locate locker locket lodge
loft logical look loop lope lotus lounge lovable lovely loving loyal lucid lucky lull lumber
lunar lunch lute lychee lynx lyrical macaw magenta magic magnet magpie mailbox major mallard
mallet mambo mammoth manage manatee mango manor mansion mantel mantis map maple marble march
marimba marina market marlin marmot maroon marsh marvel massive mastiff matte mauve meadow
meander measure mediate meek meet mellow melodic melt mend mentor meow merge mermaid merry mesa
meteor mew mighty migrate mild milky mill mime mimic mindful mingle mini minivan mink minnow
mint mirror mist mitten mix moat mobile mocha modern modest mole monocle moo moon moose mop
morph mosaic moss moth motor mouse move mow muffin muffled mug mull mumble munch murmur muse
museum musical mussel mustard mutual mystic mythic nacho nap napkin narrate narwhal natty
natural neat nebula neigh nest nestle network new newborn newt nibble nice nifty nimble noble
nod noodle normal notable notice nougat novel nudge nugget nursery nurture nuzzle oak oar oasis
oblong oboe observe ocean ocelot ochre octopus odd oink olden olive omelet onion open opossum
opulent orange orbit orchard orchid orderly organic orient oriole ornate osprey ostrich otter
outer oval owl oyster pace pack padded paddle padlock pagoda paint palace palette palm pan
pancake panda panther pantry papaya parade parasol parfait park parley parrot parsnip partner
paste pastel pastry pasture patch patio patter pause pave paw peachy peak pear pearl pebble
pecan peck pedal pelican pencil pendant penguin pennant penny pensive peony pepper peppy perch
perfect perform perky persist petal petite petunia pewter phoenix piano piccolo picnic pie pier
pigeon piglet pillow pilot pine ping pink pitch pivot pixie pizza placid plaid plain plan planet
plant plaster plate plateau play plaza pleased pleated plod plover pluck plush pocket poetic
pointer pointy poised polar polish polite polka poncho pond ponder pony poodle pop poplar poppy
popular porch pose posh possum post potato potter pounce pour powdery prairie praise prance
prawn precise predict prepare pretend pretty pretzel prevail prickly prime print prized proceed
program prompt proper prosper prudent prune publish pudding puddle puffin puffy pug pumpkin punt
puppet puppy pure purple purr putt puzzle quack quail quaint quarry quest queue quiche quiet
quill quilt quince quip quirky quiz rabbit raccoon radiant radiate radio radish raft rainbow
rainy raisin rake rally ramble ranch rapid rappel rare rattle raven read ready reason rebound
recent recite reckon recline record recycle redwood reef referee refine reflect refuel regal
regroup rejoice rejoin relax relay remain remodel repaint repair reply repose reside respond
rest restore resume rethink retreat return reunite revamp revel review revise revive revolve
rewind rewrite rhino rhyme ribbed ribbon ridge ring rinse ripe ripple rise river roam roar roast
robin robot robust rock rocket roll romp rooftop roomy roost root rose rotate round rousing rove
row rowboat royal ruby ruffle rug rugged ruler rumba rumble rummage run rural rush russet rustic
rustle saddle saffron sage sail salad salsa salty salute samba sample sandal sandbar sandy
sapling sardine sash sassy satchel satin saucer saunter save savor savvy scallop scamper scan
scarf scarlet scatter scenic scone scoop scoot scour scout scrappy scrawl scroll scrub scrunch
sculpt scurry scuttle sea seal search season secret secure sedate seek seesaw sepia sequoia
serene serve setter settle sew shaggy shake shallot shallow shampoo shape share shark sharpen
shawl sheep shelf shell shelter sherbet shift shimmer shimmy shine ship shiver shoo shop shore
shout shovel showy shrimp shrug shuffle shush shutter shuttle shy sift sigh signal silent silken
silky silly silver simmer simple sincere sing sip sit sizable sizzle skate sketch ski skilled
skillet skim skip skydive skylark slalom sled sleek sleepy sleigh slender sleuth slick slide
slim slipper sloth slouch slumber slurp small smart smile smoky snack snail snappy snazzy sneeze
snicker sniff snip snoop snooze snore snorkel snowman snowy snug snuggle soak soar sock sofa
soften solar solid solve sonic soothe sorbet sort soulful spaniel sparkle sparrow spatula speak
special speedy spell spiffy spin spiral splash splurge sponge spool spoon sporty spotted spout
sprawl spray spring sprint sprite sprout spruce spry square squash squawk squeak squeal squid
squint squirm squish stable stack stadium stage stamp stand star start stately station statue
stay steam steer stellar stem stencil step stew sticker stir stitch stoic stomp stoop stop stork
stormy stow stream street stretch stride striped stroll strudel strum strut studio study sturdy
stylish suave sublime subtle suburb subway succeed sugary summery summit sun sunbeam sundae
sundial sunfish sunrise sunset super superb surf surface surge survey swagger swan swanky sway
sweater sweep swift swim swirl swish swoop swoosh sylvan syrupy table tactful tadpole taffy
tailor talk tally tamale tame tan tango tangy tap tapir tartan tassel taste taupe tawny taxi tea
teach teacup teal teapot teensy teeny teeter tend tender tent tern terrace terrier text thank
thaw theater thicket thimble think thistle thread thrifty thrill thrive throng thrush tiara tick
ticket tide tidy tiger till tilt timely timer tiny tiptoe toad toast toffee toil token tomato
toolbox top topaz topple tote totem toucan tough tour towel tower town toy trace track tractor
trade trail train tram travel tread trek trendy trickle trill trim trinket triumph trolley
trophy trot trout trowel truck trudge truffle trumpet trundle trunk trusty try tuba tuck tufted
tugboat tulip tumble tuna tundra tune tunnel turbine turnip turtle tutor tuxedo twang tweak
tweed tweet twig twine twinkle twirl twist type ukulele ultra umber umpire unfold unfurl unicorn
unique unite unlock unpack unravel unroll unwind upbeat update upgrade upload upright urban
urchin useful vacuum valiant valid valley van vanilla vase vast vault velvet venture veranda
verdant verify vernal vest vibrant villa village vine vintage violet violin virtual visible
visit visual vital vivid vocal volcano vole volley voyage wacky waddle wade wafer waffle waft
wag wagon wait wake walk wallet walrus waltz wander wash watch water wave waxy weave webbed
welcome western whale wharf whirl whisk whisper whistle whittle whiz whole whoop whoosh wicker
widen wiggle wildcat willing willow win wind winged wink winter wintry wipe wise wish wispy
wistful witty wobble wobbly wolf wombat wonder wood woof woolen woolly work worldly worthy woven
wrangle wrap wreath wren wriggle write wry yacht yak yam yap yawn yearn yip yodel young yummy
zany zealous zebra zesty zigzag zing zip zoo zoom
`;

/** The 2048 safety words, in code-unit (alphabetical) order. */
export const SAFETY_WORDS = Object.freeze(LIST.trim().split(/\s+/));

const utf8 = new TextEncoder();

/**
 * The fingerprint string of one description (step 1 above), or null when
 * its SDP has no `a=fingerprint:` line.
 */
export function descriptionFingerprint(sdp) {
  const values = new Set();
  for (const line of String(sdp || '').split(/\r?\n/)) {
    if (line.startsWith('a=fingerprint:')) {
      const value = line.slice('a=fingerprint:'.length).trim().toLowerCase();
      if (value) values.add(value);
    }
  }
  if (values.size === 0) return null;
  return [...values].sort().join(',');
}

/** The three words for these digest bytes (step 4). */
export function wordsFromDigest(digest) {
  const bytes = digest instanceof Uint8Array ? digest : new Uint8Array(digest);
  const words = [];
  for (let i = 0; i < SAFETY_WORD_COUNT; i += 1) {
    let index = 0;
    for (let bit = i * BITS_PER_WORD; bit < (i + 1) * BITS_PER_WORD; bit += 1) {
      index = (index << 1) | ((bytes[bit >> 3] >> (7 - (bit & 7))) & 1);
    }
    words.push(SAFETY_WORDS[index]);
  }
  return words;
}

export const NONCE_BYTES = 32;
const KDF_SALT = utf8.encode('earshot/v2/safety-words');

function subtle() {
  const s = globalThis.crypto && globalThis.crypto.subtle;
  if (!s) throw new Error('no WebCrypto (not a secure page)');
  return s;
}

/** Lower-case hex of bytes. */
export function toHex(bytes) {
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/** 32 bytes from 64 lower-case hex digits, or null. */
export function nonceFromHex(text) {
  if (typeof text !== 'string' || !/^[0-9a-f]{64}$/.test(text)) return null;
  const out = new Uint8Array(NONCE_BYTES);
  for (let i = 0; i < NONCE_BYTES; i += 1) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** A fresh random nonce. */
export function newNonce() {
  return globalThis.crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
}

/** Whether fingerprint string `a` sorts before `b` by UTF-8 bytes. */
export function fingerprintBefore(a, b) {
  const x = utf8.encode(a);
  const y = utf8.encode(b);
  for (let i = 0; i < Math.min(x.length, y.length); i += 1) {
    if (x[i] !== y[i]) return x[i] < y[i];
  }
  return x.length < y.length;
}

/** SHA-256 of the nonce bytes, as lower-case hex (step 2). */
export async function commitment(nonce) {
  return toHex(new Uint8Array(await subtle().digest('SHA-256', nonce)));
}

/**
 * The three words (step 3) from the committer's and the responder's
 * fingerprint strings and nonces, in that order.
 */
export async function deriveWords(committerFp, responderFp, committerNonce, responderNonce) {
  const ikm = new Uint8Array(2 * NONCE_BYTES);
  ikm.set(committerNonce, 0);
  ikm.set(responderNonce, NONCE_BYTES);
  const key = await subtle().importKey('raw', ikm, 'HKDF', false, ['deriveBits']);
  const info = utf8.encode(`${committerFp}\n${responderFp}`);
  const bits = await subtle().deriveBits({ name: 'HKDF', hash: 'SHA-256', salt: KDF_SALT, info }, key, 256);
  return wordsFromDigest(bits);
}
