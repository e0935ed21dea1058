package report

import (
	"errors"
	"fmt"
	"image/color"
	"os"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Series is one latency distribution in a plot.
type Series struct {
	Label string
	// Kind picks the colour: "vfsd", "ref" or "floor".
	Kind string
	// Dashed draws the line dashed (e.g. the deeper queue).
	Dashed bool
	// Width scales the line (0: 1).
	Width float64
	Lat   []time.Duration // sorted
}

var kindColor = map[string]color.RGBA{
	"vfsd":  {R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}, // blue
	"ref":   {R: 0xd6, G: 0x27, B: 0x28, A: 0xff}, // red
	"floor": {R: 0x7f, G: 0x7f, B: 0x7f, A: 0xff}, // grey
	"other": {R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}, // green
}

// cdfPoints reduces sorted samples to at most n (latency µs, fraction <=)
// points, keeping both ends and the tail finely (every point of the top
// 0.1%, up to n/4 of them).
func cdfPoints(lat []time.Duration, n int) plotter.XYs {
	total := len(lat)
	if total == 0 {
		return nil
	}
	var xy plotter.XYs
	add := func(i int) {
		v := float64(lat[i]) / 1e3
		if v <= 0 {
			v = 1e-3
		}
		xy = append(xy, plotter.XY{X: v, Y: float64(i+1) / float64(total)})
	}
	tailStart := total - min(total/1000+1, n/4)
	step := max(1, tailStart/(n*3/4))
	for i := 0; i < tailStart; i += step {
		add(i)
	}
	for i := max(tailStart, 0); i < total; i++ {
		add(i)
	}
	return xy
}

// PlotCDF draws the latency CDFs of series into a PNG at path, with a
// logarithmic latency axis.
func PlotCDF(path, title string, series []Series) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "latency (µs, log scale)"
	p.Y.Label.Text = "fraction of operations ≤ latency"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min, p.Y.Max = 0, 1
	// The legend goes below the plot, where it hides no line.
	leg := plot.NewLegend()
	leg.Top, leg.Left = true, true
	leg.XOffs = vg.Points(60)
	p.Add(plotter.NewGrid())
	drawn := 0
	for _, s := range series {
		xy := cdfPoints(s.Lat, 600)
		if len(xy) == 0 {
			continue
		}
		if len(xy) == 1 { // a single point is no line
			xy = append(xy, plotter.XY{X: xy[0].X * 1.0001, Y: xy[0].Y})
		}
		l, err := plotter.NewLine(xy)
		if err != nil {
			return fmt.Errorf("plot %s: %w", s.Label, err)
		}
		c, ok := kindColor[s.Kind]
		if !ok {
			c = kindColor["other"]
		}
		l.LineStyle.Color = c
		w := s.Width
		if w <= 0 {
			w = 1
		}
		l.LineStyle.Width = vg.Points(1.5 * w)
		if s.Dashed {
			l.LineStyle.Dashes = []vg.Length{vg.Points(6), vg.Points(3)}
		}
		p.Add(l)
		leg.Add(fmt.Sprintf("%s (n=%d, p99 %s)", s.Label, len(s.Lat), Dur(percentile(s.Lat, 0.99))), l)
		drawn++
	}
	if drawn == 0 {
		return errors.New("plot: no samples")
	}
	const w, plotH = 9 * vg.Inch, 5.5 * vg.Inch
	legH := vg.Length(drawn)*leg.TextStyle.Height("Xg")*1.15 + vg.Points(12)
	img := vgimg.New(w, plotH+legH)
	dc := draw.New(img)
	p.Draw(draw.Crop(dc, 0, 0, legH, 0))
	leg.Draw(draw.Crop(dc, 0, 0, 0, -plotH))
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func percentile(lat []time.Duration, q float64) time.Duration {
	if len(lat) == 0 {
		return 0
	}
	i := min(len(lat)-1, max(0, int(q*float64(len(lat))+0.999999999)-1))
	return lat[i]
}
